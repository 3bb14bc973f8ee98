"""Operator commands: standby, online, takeover (Heartbeat's hb_standby and
hb_takeover), and events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Annotated, Any

import typer

from etcdha.cli.common import Conn, Exit, err, fail, with_conn
from etcdha.configdb import read_config, who
from etcdha.events import event_op, health_event_lines, now_rfc3339
from etcdha.keyspace import KeyKind
from etcdha.store import EventType, Op, Store

NodeArg = Annotated[
    str | None,
    typer.Argument(
        help="Node name (default: --node, ETCDHA_NODE, or this host's name).",
        show_default=False,
        metavar="NODE",
    ),
]
NodeOpt = Annotated[
    str | None,
    typer.Option("--node", envvar="ETCDHA_NODE", help="This node's name (default: hostname)."),
]
Wait = Annotated[
    float,
    typer.Option(
        help="Wait up to this many seconds for the change to take effect (0: do not wait).",
    ),
]


def _node(arg: str | None, opt: str | None) -> str:
    return arg or opt or socket.gethostname()


async def _groups_led_by(store: Store, conn: Conn, node: str) -> list[str]:
    kvs, _ = await store.get_prefix(conn.keyspace.leaders_prefix())
    led = []
    for kv in kvs:
        parsed = conn.keyspace.classify(kv.key)
        try:
            holder = json.loads(kv.value).get("node")
        except (ValueError, AttributeError):
            continue
        if parsed is not None and holder == node:
            led.append(parsed.name)
    return led


async def _known_nodes(store: Store, conn: Conn) -> list[str] | None:
    stored = await read_config(store, conn.keyspace)
    return stored.spec.node_names if stored and stored.spec else None


async def _wait_until(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    fail(f"timed out after {seconds:g}s waiting for {what}", Exit.REFUSED)


@with_conn
def standby(
    node_arg: NodeArg = None,
    node: NodeOpt = None,
    reason: Annotated[str, typer.Option(help="Why, recorded in etcd and events.")] = "standby",
    wait: Wait = 0.0,
    *,
    conn: Conn,
) -> None:
    """Put NODE in standby: it gives up every group it leads, gracefully, and
    leads nothing until `etcdha online`."""
    target = _node(node_arg, node)

    async def body(store: Store) -> None:
        nodes = await _known_nodes(store, conn)
        if nodes is not None and target not in nodes:
            fail(f"{target!r} is not one of the config's nodes ({', '.join(nodes)})")
        value = {"reason": reason, "by": who(), "at": now_rfc3339()}
        await store.txn(
            [],
            [
                Op.put(conn.keyspace.standby(target), json.dumps(value).encode()),
                event_op(
                    conn.keyspace,
                    {"type": "standby", "node": target, "reason": reason, "by": value["by"]},
                ),
            ],
        )
        err(f"{target} is in standby ({conn.keyspace.standby(target)})")
        if wait > 0:

            async def released() -> bool:
                return not await _groups_led_by(store, conn, target)

            await _wait_until(released, wait, f"{target} to release its groups")

    conn.run(body)


@with_conn
def online(
    node_arg: NodeArg = None,
    node: NodeOpt = None,
    *,
    conn: Conn,
) -> None:
    """Take NODE out of standby; with auto_failback it takes back its preferred groups."""
    target = _node(node_arg, node)

    async def body(store: Store) -> None:
        result = await store.txn(
            [],
            [
                Op.delete(conn.keyspace.standby(target)),
                event_op(conn.keyspace, {"type": "online", "node": target, "by": who()}),
            ],
        )
        deleted = result.responses[0].deleted if result.responses else 0
        err(f"{target} is online" + ("" if deleted else " (it was not in standby)"))

    conn.run(body)


@with_conn
def takeover(
    node_arg: NodeArg = None,
    node: NodeOpt = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="Group(s) to move (default: all).")
    ] = None,
    wait: Wait = 0.0,
    clear: Annotated[
        bool,
        typer.Option(
            "--clear", help="Remove the takeover of the groups: preference applies again."
        ),
    ] = False,
    *,
    conn: Conn,
) -> None:
    """Move groups to NODE now (Heartbeat's hb_takeover): the current leader hands
    over gracefully and NODE campaigns first.

    The takeover stays in force (NODE is preferred for those groups, also over
    auto_failback) until another takeover or `etcdha takeover --clear`.
    """
    target = _node(node_arg, node)

    async def body(store: Store) -> None:
        stored = await read_config(store, conn.keyspace)
        if stored is None or stored.spec is None:
            fail("no valid config in etcd; nothing to take over")
        spec = stored.spec
        if target not in spec.node_names:
            fail(f"{target!r} is not one of the config's nodes ({', '.join(spec.node_names)})")
        names = group or [g.name for g in spec.groups]
        unknown = [g for g in names if g not in {x.name for x in spec.groups}]
        if unknown:
            fail(f"no such group: {', '.join(unknown)}")
        by = who()
        if clear:
            await store.txn(
                [],
                [Op.delete(conn.keyspace.takeover(g)) for g in names]
                + [
                    event_op(conn.keyspace, {"type": "takeover-cleared", "groups": names, "by": by})
                ],
            )
            err(f"takeover of {', '.join(names)} cleared; preference applies again")
            return
        ops = [
            Op.put(
                conn.keyspace.takeover(g),
                json.dumps({"target": target, "by": by, "at": now_rfc3339()}).encode(),
            )
            for g in names
        ]
        ops.append(
            event_op(conn.keyspace, {"type": "takeover", "node": target, "groups": names, "by": by})
        )
        await store.txn([], ops)
        err(f"takeover of {', '.join(names)} by {target} requested")
        if wait > 0:

            async def moved() -> bool:
                return set(names) <= set(await _groups_led_by(store, conn, target))

            await _wait_until(moved, wait, f"{target} to lead {', '.join(names)}")

    conn.run(body)


def _event_line(data: dict[str, Any]) -> str:
    if data.get("type") == "health":
        return "\n".join(health_event_lines(data))
    parts = [str(data.get("at", "?")), str(data.get("type", "?"))]
    for field in ("group", "node"):
        if data.get(field):
            parts.append(f"{field}={data[field]}")
    if data.get("groups"):
        parts.append("groups=" + ",".join(data["groups"]))
    if data.get("reason"):
        parts.append(f"reason={data['reason']!r}")
    if data.get("by"):
        parts.append(f"by={data['by']}")
    return " ".join(parts)


@with_conn
def events(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    limit: Annotated[int, typer.Option(help="Show at most this many past events.")] = 50,
    *,
    conn: Conn,
) -> None:
    """Failovers, handovers, standby/online, takeovers, config changes and health
    transitions, oldest first."""
    ks = conn.keyspace

    def show(key: str, raw: bytes) -> None:
        parsed = ks.classify(key)
        if parsed is None or parsed.kind is not KeyKind.EVENT:
            return
        try:
            data = json.loads(raw)
        except ValueError:
            err(f"warning: {key}: not JSON; skipped")
            return
        if not isinstance(data, dict):
            return
        data.setdefault("id", parsed.name)
        typer.echo(json.dumps(data) if as_json else _event_line(data))

    async def body(store: Store) -> None:
        kvs, revision = await store.get_prefix(ks.events_prefix())
        for kv in sorted(kvs, key=lambda kv: kv.key)[-limit:] if limit else []:
            show(kv.key, kv.value)
        if follow:
            async for batch in store.watch_prefix(ks.events_prefix(), revision + 1):
                for ev in batch.events:
                    if ev.type is EventType.PUT:
                        show(ev.kv.key, ev.kv.value)

    with contextlib.suppress(KeyboardInterrupt):
        conn.run(body)
