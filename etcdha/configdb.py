"""The cluster spec's home in etcd: read it, diff it, apply it atomically."""

from __future__ import annotations

import difflib
import getpass
import json
import socket
from dataclasses import dataclass

import yaml

from etcdha.events import event_op
from etcdha.keyspace import Keyspace
from etcdha.spec import ClusterSpec
from etcdha.spec_load import Loaded, SpecInvalid, load_json, to_data, to_json
from etcdha.store import Compare, KeyValue, Op, Store


class ConfigConflict(RuntimeError):
    """Someone else changed the stored config between our read and our write."""


@dataclass(frozen=True)
class StoredConfig:
    kv: KeyValue
    loaded: Loaded | None  # None when the stored value is not a valid spec
    problem: SpecInvalid | None

    @property
    def spec(self) -> ClusterSpec | None:
        return self.loaded.spec if self.loaded else None


@dataclass(frozen=True)
class ApplyResult:
    changed: bool
    revision: int
    diff: str


async def read_config(store: Store, ks: Keyspace) -> StoredConfig | None:
    kv = await store.get(ks.config())
    if kv is None:
        return None
    return parse_stored(kv, ks)


def parse_stored(kv: KeyValue, ks: Keyspace) -> StoredConfig:
    """Never raises: a malformed stored value is reported, not fatal."""
    try:
        return StoredConfig(kv, load_json(kv.value, f"etcd:{ks.config()}"), None)
    except SpecInvalid as e:
        return StoredConfig(kv, None, e)


def canonical_yaml(spec: ClusterSpec | None) -> str:
    """Every field, defaults included, in a stable order: what a diff compares."""
    if spec is None:
        return ""
    return yaml.safe_dump(to_data(spec), sort_keys=False, width=100)


def diff_text(
    old: ClusterSpec | None, new: ClusterSpec | None, old_name: str, new_name: str
) -> str:
    return "".join(
        difflib.unified_diff(
            canonical_yaml(old).splitlines(keepends=True),
            canonical_yaml(new).splitlines(keepends=True),
            fromfile=old_name,
            tofile=new_name,
        )
    )


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def apply_config(
    store: Store, ks: Keyspace, spec: ClusterSpec, *, source: str, expect_revision: int | None
) -> ApplyResult:
    """One txn guarded by the mod revision we read, so concurrent applies never clobber.

    `expect_revision` (if given) must equal the stored config's mod revision
    (0: no config yet); otherwise the revision we read just now is the guard.
    """
    current = await read_config(store, ks)
    current_rev = current.kv.mod_revision if current else 0
    if expect_revision is not None and expect_revision != current_rev:
        raise ConfigConflict(
            f"the stored config is at revision {current_rev}, not {expect_revision}"
        )
    old_spec = current.spec if current else None
    diff = diff_text(old_spec, spec, f"etcd:{ks.config()}", source)
    if current is not None and current.kv.value == to_json(spec):
        return ApplyResult(False, current_rev, "")
    event = {
        "type": "config-applied",
        "by": who(),
        "source": source,
        "previous_revision": current_rev,
        "services": len(spec.virtual_services),
        "groups": [g.name for g in spec.groups],
    }
    result = await store.txn(
        [Compare.mod_revision(ks.config(), "==", current_rev)],
        [Op.put(ks.config(), to_json(spec)), event_op(ks, event)],
    )
    if not result.succeeded:
        latest = await store.get(ks.config())
        latest_rev = latest.mod_revision if latest else 0
        raise ConfigConflict(
            f"the stored config changed while we applied (revision {current_rev} -> "
            f"{latest_rev}); nothing was written"
        )
    return ApplyResult(True, result.revision, diff)


def describe(spec: ClusterSpec) -> str:
    reals = sum(len(vs.reals) for vs in spec.virtual_services)
    return (
        f"{len(spec.nodes)} nodes, {len(spec.groups)} groups, "
        f"{len(spec.virtual_services)} virtual services, {reals} real server entries"
    )


def json_value(kv: KeyValue) -> object:
    try:
        return json.loads(kv.value)
    except ValueError:
        return None
