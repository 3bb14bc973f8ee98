"""The checker-only worker (``etcdha checker start``).

:func:`run_standalone` grants its own lease, keeps it alive, claims its
checker name, follows the config key, runs a :class:`~etcdha.checker.Checker`
and serves /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
from collections.abc import Callable
from pathlib import Path

from etcdha.checker import Checker, freeze_gc
from etcdha.checker_name import claim_name
from etcdha.configdb import parse_stored
from etcdha.httpd import HTTPServer
from etcdha.keyspace import Keyspace, validate_name
from etcdha.spec import ClusterSpec
from etcdha.store import (
    EtcdError,
    EtcdSettings,
    Store,
    StoreWentBack,
    WatchCompacted,
)

log = logging.getLogger(__name__)


class _LeaseHolder:
    """The standalone checker's own lease: granted, kept alive, re-granted when lost."""

    def __init__(self, store: Store, ttl: int) -> None:
        self.store = store
        self.ttl = max(2, ttl)
        self.lease_id = 0

    async def run(self) -> None:
        while True:
            if not self.lease_id:
                try:
                    self.lease_id = (await self.store.grant(self.ttl)).id
                    log.info("checker lease %x granted (TTL %ds)", self.lease_id, self.ttl)
                except EtcdError as e:
                    log.warning("cannot take a lease yet: %s", e)
                    await asyncio.sleep(1.0)
                    continue
            await asyncio.sleep(self.ttl / 3)
            try:
                answer = await self.store.keepalive_once(self.lease_id, timeout=self.ttl / 3)
            except EtcdError as e:
                log.warning("lease keepalive failed: %s", e)
                continue
            if answer.ttl <= 0:
                log.warning("checker lease %x expired; taking a new one", self.lease_id)
                self.lease_id = 0

    async def revoke(self) -> None:
        if self.lease_id:
            with contextlib.suppress(EtcdError):
                await self.store.revoke(self.lease_id)
            self.lease_id = 0


def raise_fd_limit() -> None:
    """Every check in flight holds a socket: allow as many as the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def wait_for_config(store: Store, keyspace: Keyspace) -> tuple[ClusterSpec, int]:
    """The stored spec and its revision, once there is a valid one."""
    said = False
    while True:
        kv = await store.get(keyspace.config())
        if kv is not None:
            stored = parse_stored(kv, keyspace)
            if stored.spec is not None:
                return stored.spec, kv.mod_revision
            log.error("the stored config is invalid: %s", stored.problem)
        if not said:
            log.info("waiting for a config at %s", keyspace.config())
            said = True
        await asyncio.sleep(1.0)


async def follow_config(
    store: Store, keyspace: Keyspace, revision: int, on_spec: Callable[[ClusterSpec], None]
) -> None:
    """Call ``on_spec`` with every valid config stored after ``revision``."""
    while True:
        try:
            async for batch in store.watch_prefix(keyspace.config(), revision + 1):
                revision = batch.revision
                for event in batch.events:
                    if event.kv.key != keyspace.config() or not event.kv.value:
                        continue
                    stored = parse_stored(event.kv, keyspace)
                    if stored.spec is None:
                        log.error("ignoring an invalid config: %s", stored.problem)
                        continue
                    log.info("config revision %d is in force", event.kv.mod_revision)
                    on_spec(stored.spec)
        except (WatchCompacted, StoreWentBack):
            kvs, revision = await store.get_prefix(keyspace.config())
            for kv in kvs:
                stored = parse_stored(kv, keyspace)
                if kv.key == keyspace.config() and stored.spec is not None:
                    on_spec(stored.spec)


def loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


async def run_standalone(
    settings: EtcdSettings,
    keyspace: Keyspace,
    name: str,
    *,
    checks_dir: Path | None = None,
    listen: tuple[str, int] | None = None,
    ready: Callable[[Checker], None] | None = None,
) -> None:
    """``etcdha checker start``: check the reals of the stored config until cancelled.

    The lease TTL is the spec's election.lease_ttl; the lease is revoked on the
    way out, so this checker's verdicts disappear with it.
    """
    validate_name(name, "checker name")
    async with await Store.connect(settings) as store:
        spec, config_rev = await wait_for_config(store, keyspace)
        holder = _LeaseHolder(store, math.ceil(spec.election.lease_ttl))
        holder.lease_id = (await store.grant(holder.ttl)).id
        try:
            await claim_name(store, keyspace, name, holder.lease_id, "worker")
        except BaseException:
            await asyncio.shield(holder.revoke())
            raise
        current = spec
        checker = Checker(
            store,
            keyspace,
            name,
            lambda: current,
            lambda: holder.lease_id,
            checks_dir=checks_dir,
            role="worker",
        )
        # etcd went back in time (restored, rebuilt): what it holds of our verdicts
        # may be old; write them all again.
        store.on_went_back(lambda why: checker.republish())
        http: HTTPServer | None = None
        if listen is not None:
            http = HTTPServer(
                listen[0],
                listen[1],
                lambda: (True, "ok"),
                lambda: (bool(holder.lease_id), "ok" if holder.lease_id else "no lease"),
            )
            await http.start()

        def new_spec(spec: ClusterSpec) -> None:
            nonlocal current
            current = spec
            checker.update(spec)

        checker.update(current)
        freeze_gc()
        log.info(
            "checker %s: %d real servers, %s event loop", name, len(checker.states), loop_name()
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(holder.run(), name="lease")
                tg.create_task(follow_config(store, keyspace, config_rev, new_spec), name="config")
                tg.create_task(checker.run(), name="checker")
                if ready is not None:
                    ready(checker)
        finally:
            if http is not None:
                await http.close()
            await asyncio.shield(holder.revoke())
