"""Import of a Heartbeat v1 + ldirectord setup (ha.cf, haresources, ldirectord.cf).

`import_legacy()` reads the files the way Heartbeat 3.0.6 and ldirectord 4.12.0
(Debian 12) read them and returns a validated ClusterSpec with one note per
directive: how it was mapped, why it is not needed (and what replaces it), or
what changes. Anything that cannot be carried over without changing behaviour
is refused: ImportRefused lists every such problem with its file and line, and
nothing is imported. docs/import.md describes each directive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from etcdha.legacy.common import (
    DEFAULT_CHECKS_DIR,
    Collector,
    ImportNote,
    ImportRefused,
    Origin,
)
from etcdha.legacy.hacf import HaCf, parse_hacf, ping_timing
from etcdha.legacy.haresources import HA_DIR, GroupDraft, parse_haresources
from etcdha.legacy.ldbuild import build_file
from etcdha.legacy.ldirectord import parse_ldirectord
from etcdha.spec import ClusterSpec
from etcdha.spec_load import Problem, SpecInvalid, validate_data

__all__ = ["DEFAULT_CHECKS_DIR", "ImportNote", "ImportRefused", "ImportResult", "import_legacy"]

PathKey = tuple[str | int, ...]


@dataclass
class ImportResult:
    spec: ClusterSpec
    notes: list[ImportNote]
    warnings: list[Problem]


class _Import:
    def __init__(
        self,
        ha_cf: Path | None,
        haresources: Path | None,
        ldirectord: Path | None,
        checks_dir: Path | None,
        root: Path,
    ) -> None:
        self.ha_cf, self.haresources, self.ldirectord = ha_cf, haresources, ldirectord
        self.checks_dir = PurePosixPath(str(checks_dir or DEFAULT_CHECKS_DIR))
        self.root = root
        self.col = Collector()
        self.data: dict[str, Any] = {}
        self.origins: dict[PathKey, Origin] = {}
        self.ldirectord_used = False

    def run(self) -> ImportResult:
        cf = parse_hacf(self.ha_cf, self.col) if self.ha_cf else None
        nodes = [n for n, _ in cf.nodes] if cf else None
        groups = None
        if self.haresources:
            groups = parse_haresources(self.haresources, self.col, nodes, self.root)
        self.nodes(cf, groups)
        if cf:
            self.election(cf)
        self.data["groups"] = []
        self.data["virtual_services"] = []
        for gi, group in enumerate(groups or []):
            self.group(gi, group)
        if self.haresources is None and self.ldirectord is not None:
            self.read_ldirectord(self.ldirectord, None, set())
        elif self.ldirectord is not None and not self.ldirectord_used and groups is not None:
            self.col.refuse(
                Origin(str(self.ldirectord), None, "ldirectord"),
                "no ldirectord resource in haresources names this file, so its services "
                f"would belong to no group: add ldirectord::{self.ldirectord.name} to a "
                "haresources line, or leave the file out",
            )
        return self.validate()

    # -- ha.cf -------------------------------------------------------------------------

    def nodes(self, cf: HaCf | None, groups: list[GroupDraft] | None) -> None:
        if cf is not None:
            self.data["nodes"] = [n for n, _ in cf.nodes]
            for i, (_, at) in enumerate(cf.nodes):
                self.origins[("nodes", i)] = at
            self.origins[("nodes",)] = Origin(cf.source, None, "node")
            return
        names: list[str] = []
        for g in groups or []:
            if g.node not in names:
                names.append(g.node)
                self.origins[("nodes", len(names) - 1)] = g.at
        self.data["nodes"] = names
        given = self.haresources or self.ldirectord
        at = Origin(str(given) if given else "import", None, "nodes")
        self.origins[("nodes",)] = at
        if names:
            self.col.warn(
                at,
                f"no ha.cf: the nodes are haresources' preferred nodes ({', '.join(names)}); "
                "add the other directors to nodes: in the spec",
            )
        elif cf is None:
            self.col.refuse(at, "no node is named: give ha.cf (its node lines) or haresources")

    def election(self, cf: HaCf) -> None:
        whole = Origin(cf.source, None, "ha.cf")
        e: dict[str, Any] = {
            "lease_ttl": cf.deadtime.ms / 1000,
            "keepalive_interval": cf.keepalive.ms / 1000,
            "auto_failback": cf.auto_failback,
        }
        self.origins[("election",)] = whole
        self.origins[("election", "lease_ttl")] = cf.deadtime.at or whole
        self.origins[("election", "keepalive_interval")] = cf.keepalive.at or whole
        self.origins[("election", "fence_margin")] = cf.deadtime.at or whole
        if cf.deadtime.at is None:
            self.col.mapped(whole, "no deadtime: Heartbeat's 30s -> election.lease_ttl 30s")
        if cf.keepalive.at is None:
            self.col.mapped(whole, "no keepalive: Heartbeat's 1s -> election.keepalive_interval")
        if cf.ping_nodes:
            e["ping_nodes"] = [ip for ip, _ in cf.ping_nodes]
            interval, failures = ping_timing(cf)
            e["ping_interval"] = interval
            e["ping_failures"] = failures
            e["ping_timeout"] = min(1.0, interval)
            for i, (_, at) in enumerate(cf.ping_nodes):
                self.origins[("election", "ping_nodes", i)] = at
            self.col.mapped(
                cf.ping_nodes[0][1],
                f"Heartbeat pings every keepalive and gives a ping node up after deadping "
                f"(default: deadtime) -> ping_interval {interval:g}s, ping_failures {failures}",
            )
        self.data["election"] = e

    # -- haresources ---------------------------------------------------------------------

    def group(self, gi: int, group: GroupDraft) -> None:
        resources: list[dict[str, Any]] = []
        base = ("groups", gi)
        self.origins[base] = group.at
        self.origins[(*base, "name")] = group.at
        self.origins[(*base, "node")] = group.at
        configs: list[tuple[str, Origin]] = []
        for r in group.resources:
            if r.ldirectord is not None:
                configs.append((r.ldirectord, r.at))
                if any(x.get("type") == "ipvs" for x in resources):
                    self.col.mapped(
                        r.at, "a second ldirectord in the group: its services join the same table"
                    )
                    continue
            self.origins[(*base, "resources", len(resources))] = r.at
            resources.append(r.data)
        self.data["groups"].append({"name": group.name, "node": group.node, "resources": resources})
        for config, at in configs:
            path = self.find_ldirectord(config, at)
            if path is not None:
                self.read_ldirectord(path, group.name, set())

    def find_ldirectord(self, config: str, at: Origin) -> Path | None:
        """The file an `ldirectord::config` resource reads, looked up as ldirectord does
        (/etc/ha.d/<name>, /etc/ha.d/conf/<name>), then beside the haresources file."""
        wanted = PurePosixPath(config)
        if self.ldirectord is not None and self.ldirectord.name == wanted.name:
            self.ldirectord_used = True
            return self.ldirectord
        assert self.haresources is not None
        beside = self.haresources.parent
        if wanted.is_absolute():
            candidates = [self.root / str(wanted).lstrip("/"), beside / wanted.name]
        else:
            etc = self.root / str(HA_DIR).lstrip("/")
            candidates = [etc / config, etc / "conf" / config, beside / config]
            candidates.append(beside / "conf" / config)
        for c in candidates:
            if c.is_file():
                if c.parent == beside or c.parent == beside / "conf":
                    self.col.mapped(at, f"ldirectord file {config}: read from {c}")
                return c
        shown = ", ".join(str(c) for c in candidates)
        self.col.refuse(at, f"ldirectord file {config} is missing (looked for {shown})")
        return None

    # -- ldirectord.cf ------------------------------------------------------------------

    def read_ldirectord(self, path: Path, group: str | None, seen: set[Path]) -> None:
        if path.resolve() in seen:
            return
        seen.add(path.resolve())
        ld = parse_ldirectord(path, self.col)
        if ld is None:
            return
        for built in build_file(ld, self.col, self.checks_dir, group):
            index = len(self.data["virtual_services"])
            self.data["virtual_services"].append(built.data)
            for key, at in built.origins.items():
                self.origins[("virtual_services", index, *key)] = at
        for name, at in ld.executes:
            child = self.find_executed(path, name, at)
            if child is not None:
                self.col.mapped(
                    at, f"execute={name}: its virtual services are imported into the same group"
                )
                self.read_ldirectord(child, group, seen)

    def find_executed(self, parent: Path, name: str, at: Origin) -> Path | None:
        etc = self.root / str(HA_DIR).lstrip("/")
        wanted = PurePosixPath(name)
        candidates = [etc / name, etc / "conf" / name]
        if wanted.is_absolute():
            candidates.append(self.root / name.lstrip("/"))
        candidates.append(parent.parent / wanted.name)
        for c in candidates:
            if c.is_file():
                return c
        shown = ", ".join(str(c) for c in candidates)
        self.col.refuse(at, f"execute={name}: Config file {name} not found (looked for {shown})")
        return None

    # -- the spec ------------------------------------------------------------------------

    def where(self, path: str) -> Origin | None:
        key = _path_key(path)
        while True:
            if key in self.origins:
                return self.origins[key]
            if not key:
                return None
            key = key[:-1]

    def translate(self, problems: list[Problem]) -> list[Problem]:
        out = []
        for p in problems:
            at = self.where(p.path)
            if at is None:
                out.append(Problem("import", None, p.path, p.message))
            else:
                out.append(Problem(at.source, at.line, at.directive, f"{p.message} ({p.path})"))
        return out

    def validate(self) -> ImportResult:
        problems = list(self.col.problems)
        try:
            loaded = validate_data(self.data, "import")
        except SpecInvalid as e:
            for p in self.translate(e.problems):
                if problems and self.col.has_problem_at(p.source, p.line):
                    continue
                if problems and p.line is None:
                    continue
                problems.append(p)
            raise ImportRefused(problems) from None
        if problems:
            raise ImportRefused(problems)
        sources: dict[str, int] = {}
        for n in self.col.notes:
            sources.setdefault(n.source, len(sources))
        notes = sorted(self.col.notes, key=lambda n: (sources[n.source], n.line or 0))
        return ImportResult(loaded.spec, notes, self.translate(loaded.warnings))


def _path_key(path: str) -> PathKey:
    parts: list[str | int] = []
    for chunk in path.replace("]", "").split("."):
        name, *indices = chunk.split("[")
        if name:
            parts.append(name)
        parts.extend(int(i) for i in indices)
    return tuple(parts)


def import_legacy(
    ha_cf: Path | None,
    haresources: Path | None,
    ldirectord: Path | None,
    checks_dir: Path | None = None,
    *,
    root: Path = Path("/"),
) -> ImportResult:
    """Import a Heartbeat v1 + ldirectord setup.

    `checks_dir` is where external checks live (default /usr/lib/etcdha/checks);
    a checkcommand elsewhere is refused. `root` is where /etc/ha.d and /etc/init.d
    are looked for (for ldirectord files and resource scripts named relatively).
    Raises ImportRefused with every problem found; nothing is half-imported.
    """
    return _Import(ha_cf, haresources, ldirectord, checks_dir, root).run()
