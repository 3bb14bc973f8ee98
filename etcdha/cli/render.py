"""`etcdha render`: the IPVS table the config and the current health ask for."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from etcdha.cli.common import Conn, err, fail, out_json, with_conn
from etcdha.ipvs.desired import plan
from etcdha.ipvs.inputs import inputs_from_kvs
from etcdha.ipvs.text import to_ipvsadm, to_json
from etcdha.store import Store


class RenderFormat(StrEnum):
    ipvsadm = "ipvsadm"
    json = "json"


@with_conn
def render(
    format: Annotated[
        RenderFormat,
        typer.Option(
            "--format",
            help="ipvsadm: rules for ipvsadm-restore (ipvsadm-save -n style, plus -x/-y "
            "thresholds); json: an object with the table and the state of every real.",
        ),
    ] = RenderFormat.ipvsadm,
    group: Annotated[
        str | None,
        typer.Option("--group", "-g", help="Only this group's services (default: all)."),
    ] = None,
    *,
    conn: Conn,
) -> None:
    """Print the desired IPVS table from the stored config, the health verdicts and
    the drains in etcd, without touching the kernel.

    A real whose verdict is unknown (no checker has spoken) counts as up, as the
    agent's reconciler counts it. JSON output: {"group", "config_revision",
    "revision", "services" (the table: see docs/ipvs.md), "fallback_active"
    (service segments), "reals": [{"service", "real", "up", "drained",
    "weight" (null: left out)}]}.
    """

    async def body(store: Store) -> None:
        kvs, revision = await store.get_prefix(conn.keyspace.root)
        read = inputs_from_kvs(conn.keyspace, kvs, revision)
        for problem in read.problems:
            err(f"warning: {problem}")
        spec = read.inputs.spec
        if spec is None:
            fail("no valid config in etcd (etcdha config apply stores one)")
        if group is not None and group not in {g.name for g in spec.groups}:
            known = ", ".join(g.name for g in spec.groups) or "none"
            fail(f"no such group {group!r} (groups: {known})")
        p = plan(spec, group, read.inputs.verdicts, read.inputs.drains, read.inputs.weights)
        if format is RenderFormat.ipvsadm:
            typer.echo(to_ipvsadm(p.table), nl=False)
            return
        data: dict[str, Any] = {
            "group": group,
            "config_revision": read.inputs.config_revision,
            "revision": revision,
            "services": to_json(p.table),
            "fallback_active": [k.segment for k in p.fallback_active],
            "reals": [
                {
                    "service": r.service.segment,
                    "real": r.segment,
                    "up": r.up,
                    "drained": r.drained,
                    "weight": r.weight,
                }
                for r in p.reals
            ],
        }
        out_json(data)

    conn.run(body)
