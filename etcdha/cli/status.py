"""`etcdha status`: what etcd says about the cluster."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from etcdha.cli.common import Conn, err, out_json, with_conn
from etcdha.configdb import describe, parse_stored
from etcdha.store import Store


@with_conn
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Stable JSON on stdout.")] = False,
    *,
    conn: Conn,
) -> None:
    """Show the cluster's state in etcd: config, and any keys etcdha does not know."""
    ks = conn.keyspace

    async def body(store: Store) -> dict[str, Any]:
        kvs, revision = await store.get_prefix(ks.root)
        report: dict[str, Any] = {
            "cluster": ks.cluster,
            "prefix": ks.root,
            "revision": revision,
            "config": None,
            "unknown_keys": [],
        }
        for kv in kvs:
            parsed = ks.classify(kv.key)
            if parsed is None:
                report["unknown_keys"].append(kv.key)
            elif parsed.kind == "config":
                stored = parse_stored(kv, ks)
                report["config"] = {
                    "mod_revision": kv.mod_revision,
                    "valid": stored.problem is None,
                    "summary": describe(stored.spec) if stored.spec else None,
                    "problems": [str(p) for p in stored.problem.problems] if stored.problem else [],
                }
        return report

    report = conn.run(body)
    if as_json:
        out_json(report)
    else:
        cfg = report["config"]
        typer.echo(
            f"cluster {report['cluster']} ({report['prefix']}) at revision {report['revision']}"
        )
        if cfg is None:
            typer.echo("config: none applied")
        elif cfg["valid"]:
            typer.echo(f"config: revision {cfg['mod_revision']}, {cfg['summary']}")
        else:
            typer.echo(f"config: revision {cfg['mod_revision']}, NOT VALID")
    for problem in (report["config"] or {}).get("problems", []):
        err(f"error: {problem}")
    for key in report["unknown_keys"]:
        err(f"warning: {key}: not a key etcdha writes; left alone")
