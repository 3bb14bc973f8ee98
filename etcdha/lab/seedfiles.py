"""The seed's Heartbeat and ldirectord files, as the lab feeds them to `etcdha config import`.

The files are copied unchanged except for two things, both reported: every
address moves from the seed's private ranges to the lab's documentation
ranges (same host part, see :mod:`etcdha.lab.topology`), and Heartbeat's
``deadtime`` (30 s in the seed) is shortened so the demo stays brisk; its
``keepalive`` shrinks with it, as etcdha wants at least three renewals per
lease.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from etcdha.lab.seed_import import EXAMPLES, SEED_FILES
from etcdha.lab.topology import map_seed_address

_IPV4 = re.compile(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b")
_TIMING = re.compile(r"^(?P<key>deadtime|keepalive)\s+(?P<value>\S+)", re.MULTILINE)


@dataclass(frozen=True)
class SeedChange:
    file: str
    line: int
    seed: str
    lab: str


def keepalive_for(deadtime: int) -> int:
    """Heartbeat's keepalive for a shortened deadtime: the seed's 2 s, or less so that
    a lease gets at least three renewals."""
    return max(1, min(2, deadtime // 3))


def _rewrite(name: str, text: str, deadtime: int | None) -> tuple[str, list[SeedChange]]:
    changes: list[SeedChange] = []
    out = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        new = line
        code, hash_, comment = line.partition("#")
        mapped = _IPV4.sub(lambda m: map_seed_address(m.group(0)), code)
        timing = _TIMING.match(mapped) if name == "ha.cf" and deadtime is not None else None
        if timing is not None and deadtime is not None:
            value = deadtime if timing["key"] == "deadtime" else keepalive_for(deadtime)
            mapped = f"{timing['key']} {value}"
            comment = f" shortened from {timing['value']} for the lab (seed: {comment.strip()})\n"
            hash_ = "    #"
        new = mapped + hash_ + comment
        if not new.endswith("\n") and line.endswith("\n"):
            new += "\n"
        if new != line:
            changes.append(SeedChange(name, number, line.strip(), new.strip()))
        out.append(new)
    return "".join(out), changes


def write_lab_seed(
    dest: Path, deadtime: int | None, examples: Path = EXAMPLES
) -> tuple[dict[str, Path], list[SeedChange]]:
    """Copy ha.cf, haresources and ldirectord.cf to ``dest`` for the lab; returns
    their paths by name and every line changed."""
    dest.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    changes: list[SeedChange] = []
    for name in SEED_FILES:
        text, changed = _rewrite(name, (examples / name).read_text(), deadtime)
        (dest / name).write_text(text)
        paths[name] = dest / name
        changes += changed
    return paths, changes
