"""Load kernel modules the way modprobe would, without kmod: inside user-mode-linux.

Debian's user-mode-linux kernel ships its modules in /usr/lib/uml/modules/<release>,
and the machines the tests run on may have no kmod at all. This file reads that
tree's modules.dep, loads each module's dependencies first and then the module,
with the finit_module system call. It uses the standard library only, so the
UML init script runs it by path with `python -S -I` (a fast start over hostfs):

    python3 -S -I kmod.py [--dir DIR] MODULE...

Names may be aliases (modules.alias), as the kernel's request_module() gives
them. A module already loaded (or built in) is skipped; an unknown module or a failed
load is reported on stderr and makes the exit status 1 once all are tried.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import os
import platform
import sys

UML_MODULES = "/usr/lib/uml/modules"
_SYS_FINIT_MODULE = {"x86_64": 313, "aarch64": 273}


def _name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def read_deps(tree: str) -> dict[str, tuple[str, list[str]]]:
    """module name -> (its path in the tree, its dependencies' paths, deepest last)."""
    deps: dict[str, tuple[str, list[str]]] = {}
    with open(os.path.join(tree, "modules.dep")) as f:
        for line in f:
            path, _, rest = line.partition(":")
            if path.strip():
                deps[_name(path.strip())] = (path.strip(), rest.split())
    return deps


def read_aliases(tree: str) -> list[tuple[str, str]]:
    """(pattern, module) pairs of modules.alias: what request_module() asks for."""
    out: list[tuple[str, str]] = []
    try:
        with open(os.path.join(tree, "modules.alias")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "alias":
                    out.append((parts[1], parts[2].replace("-", "_")))
    except OSError:
        pass
    return out


def builtin(tree: str) -> set[str]:
    try:
        with open(os.path.join(tree, "modules.builtin")) as f:
            return {_name(line.strip()) for line in f if line.strip()}
    except OSError:
        return set()


def loaded() -> set[str]:
    with open("/proc/modules") as f:
        return {line.split()[0] for line in f if line.strip()}


def load(names: list[str], tree: str) -> list[str]:
    """Load `names` and their dependencies; returns one line per problem."""
    number = _SYS_FINIT_MODULE.get(platform.machine())
    if number is None:
        return [f"finit_module: unknown system call number on {platform.machine()}"]
    libc = ctypes.CDLL(None, use_errno=True)
    deps = read_deps(tree)
    present = loaded() | builtin(tree)
    problems: list[str] = []

    def insert(path: str) -> None:
        name = _name(path)
        if name in present:
            return
        fd = os.open(os.path.join(tree, path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.syscall(number, fd, b"", 0) != 0:
                err = ctypes.get_errno()
                if err != errno.EEXIST:
                    problems.append(f"{name}: {os.strerror(err)}")
                    return
        finally:
            os.close(fd)
        present.add(name)

    aliases: list[tuple[str, str]] | None = None
    for wanted in names:
        key = wanted.replace("-", "_")
        if key not in deps and key not in present:
            # An alias, as the kernel asks (rtnl-link-dummy, net-pf-10, fs-...).
            aliases = read_aliases(tree) if aliases is None else aliases
            key = next((m for p, m in aliases if fnmatch.fnmatchcase(wanted, p)), key)
        if key in present:
            continue
        if key not in deps:
            problems.append(f"{wanted}: no such module in {tree}")
            continue
        path, needs = deps[key]
        for dep in reversed(needs):
            insert(dep)
        insert(path)
    return problems


def main(argv: list[str]) -> int:
    tree = os.path.join(UML_MODULES, os.uname().release)
    if argv[:1] == ["--dir"]:
        tree, argv = argv[1], argv[2:]
    problems = load(argv, tree)
    for p in problems:
        print(f"kmod: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
