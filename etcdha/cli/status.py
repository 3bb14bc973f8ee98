"""`etcdha status`: what etcd says about the cluster, in one read."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import typer

from etcdha.cli.common import Conn, err, out_json, with_conn
from etcdha.configdb import describe, parse_stored
from etcdha.health import health_report
from etcdha.ipvs.desired import plan
from etcdha.ipvs.inputs import inputs_from_kvs
from etcdha.ipvs.text import to_ipvsadm
from etcdha.keyspace import KeyKind
from etcdha.spec import ClusterSpec
from etcdha.store import KeyValue, Store
from etcdha.view_sync import json_object


def collect(kvs: list[KeyValue], conn: Conn, revision: int) -> dict[str, Any]:
    """The status report as stable JSON-ready data (documented in `--help`)."""
    ks = conn.keyspace
    report: dict[str, Any] = {
        "cluster": ks.cluster,
        "prefix": ks.root,
        "revision": revision,
        "config": None,
        "groups": {},
        "members": {},
        "standby": {},
        "takeover": {},
        "unknown_keys": [],
        "malformed_keys": [],
    }
    last_acquired: dict[str, dict[str, Any]] = {}
    applied: dict[str, dict[str, Any]] = {}
    spec = None
    for kv in kvs:
        parsed = ks.classify(kv.key)
        if parsed is None:
            report["unknown_keys"].append(kv.key)
            continue
        data = json_object(kv)
        if parsed.kind is KeyKind.CONFIG:
            stored = parse_stored(kv, ks)
            spec = stored.spec
            report["config"] = {
                "mod_revision": kv.mod_revision,
                "valid": stored.problem is None,
                "summary": describe(stored.spec) if stored.spec else None,
                "problems": [str(p) for p in stored.problem.problems] if stored.problem else [],
            }
        elif data is None and parsed.kind is not KeyKind.EVENT:
            report["malformed_keys"].append(kv.key)
        elif parsed.kind is KeyKind.LEADER and data is not None:
            report["groups"][parsed.name] = {
                "leader": data.get("node"),
                "term": kv.create_revision,
                "since": data.get("since"),
                "lease": format(kv.lease, "x"),
            }
        elif parsed.kind is KeyKind.MEMBER and data is not None:
            report["members"][parsed.name] = {
                "eligible": data.get("eligible"),
                "why": data.get("why"),
                "ping_ok": data.get("ping_ok"),
                "holding": data.get("holding", {}),
                "host": data.get("host"),
                "version": data.get("version"),
                "started": data.get("started"),
                "config_revision": data.get("config_revision"),
                "kernel_settings": data.get("kernel_settings") or [],
            }
        elif parsed.kind is KeyKind.STATUS_IPVS and data is not None:
            applied[parsed.name] = {
                k: data.get(k)
                for k in (
                    "applied_at",
                    "config_revision",
                    "health_revision",
                    "drain_revision",
                    "services",
                    "destinations",
                    "fallback_active",
                    "rules_sha256",
                    "refused",
                )
            }
        elif parsed.kind is KeyKind.STANDBY and data is not None:
            report["standby"][parsed.name] = data
        elif parsed.kind is KeyKind.TAKEOVER and data is not None:
            report["takeover"][parsed.name] = data
        elif parsed.kind is KeyKind.EVENT and data and data.get("type") == "leader-acquired":
            last_acquired[str(data.get("group"))] = {
                k: data.get(k) for k in ("at", "node", "reason")
            }
    if spec is not None:
        for group in spec.groups:
            report["groups"].setdefault(group.name, {"leader": None})
    for name, info in report["groups"].items():
        info["last_change"] = last_acquired.get(name)
    if spec is not None:
        _ipvs_state(report, spec, applied, kvs, conn, revision)
    return report


def _ipvs_state(
    report: dict[str, Any],
    spec: ClusterSpec,
    applied: dict[str, dict[str, Any]],
    kvs: list[KeyValue],
    conn: Conn,
    revision: int,
) -> None:
    """Per IPVS group: the table the leader last applied, the table desired now,
    and whether they are the same rules."""
    inputs = inputs_from_kvs(conn.keyspace, kvs, revision).inputs
    for group in spec.groups:
        if not any(r.type == "ipvs" for r in group.resources):
            continue
        table = plan(spec, group.name, inputs.verdicts, inputs.drains, inputs.weights).table
        desired = {
            "services": len(table),
            "destinations": table.dest_count,
            "rules_sha256": hashlib.sha256(to_ipvsadm(table).encode()).hexdigest(),
        }
        done = applied.get(group.name)
        report["groups"][group.name]["ipvs"] = {
            "desired": desired,
            "applied": done,
            "in_sync": done is not None and done.get("rules_sha256") == desired["rules_sha256"],
        }


def _print(report: dict[str, Any]) -> None:
    typer.echo(f"cluster {report['cluster']} ({report['prefix']}) at revision {report['revision']}")
    cfg = report["config"]
    if cfg is None:
        typer.echo("config: none applied")
    else:
        state = cfg["summary"] if cfg["valid"] else "NOT VALID"
        typer.echo(f"config: revision {cfg['mod_revision']}, {state}")
    typer.echo("groups:")
    for name, g in sorted(report["groups"].items()):
        if g.get("leader"):
            line = f"  {name}: led by {g['leader']} (term {g['term']}, since {g['since']})"
        else:
            line = f"  {name}: NO LEADER"
        if name in report["takeover"]:
            line += f"; taken over by {report['takeover'][name].get('target')}"
        typer.echo(line)
        last = g.get("last_change")
        if last:
            typer.echo(f"    last change {last['at']}: {last['node']} ({last['reason']})")
        ipvs = g.get("ipvs")
        if ipvs:
            typer.echo("    " + _ipvs_line(ipvs))
    typer.echo("members:")
    for name, m in sorted(report["members"].items()):
        state = "eligible" if m["eligible"] else "NOT eligible"
        why = f" ({m['why']})" if m.get("why") else ""
        held = [a for addrs in (m.get("holding") or {}).values() for a in addrs]
        holds = f", holds {', '.join(held)}" if held else ""
        typer.echo(f"  {name}: {state}{why}{holds}")
        for k in m.get("kernel_settings") or []:
            need = "needs" if k.get("required") else "advised"
            typer.echo(
                f"    kernel: {k.get('setting')} is {k.get('actual')}, {need} "
                f"{k.get('wanted')}: {k.get('why')}"
            )
    for name, s in sorted(report["standby"].items()):
        if name not in report["members"]:
            typer.echo(f"  {name}: standby ({s.get('reason')}), not running")
    if report["reals"]:
        typer.echo("real servers:")
    for r in report["reals"]:
        since = f" since {r['since']}" if r.get("since") else ""
        detail = f" ({r['detail']})" if r.get("detail") else ""
        typer.echo(
            f"  {r['service_label'] or r['service']} -> {r['real_label'] or r['real']}: "
            f"{r['state']}{since}{detail} [{r['policy']}: {r['reason']}]"
        )
        for v in r.get("views", []):
            typer.echo(
                f"    {v.get('checker')}: {v.get('state')} since {v.get('since')}"
                + (f" ({v['detail']})" if v.get("detail") else "")
            )


def _ipvs_line(ipvs: dict[str, Any]) -> str:
    d = ipvs["desired"]
    want = f"ipvs: desired {d['services']} services, {d['destinations']} destinations"
    a = ipvs.get("applied")
    if not a:
        return f"{want}; nothing applied by a leader yet"
    if ipvs["in_sync"]:
        state = f"applied at {a.get('applied_at')} (health revision {a.get('health_revision')})"
    else:
        state = (
            f"NOT the table applied at {a.get('applied_at')} ({a.get('services')} services, "
            f"{a.get('destinations')} destinations; being applied, or refused)"
        )
    refused = a.get("refused") or []
    fallback = a.get("fallback_active") or []
    extra = f"; fallback serving {', '.join(fallback)}" if fallback else ""
    extra += f"; {len(refused)} changes refused by the kernel" if refused else ""
    return f"{want}, {state}{extra}"


@with_conn
def status(
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Stable JSON on stdout: cluster, prefix, revision, config, groups (leader, "
            "term, since, lease, last_change, ipvs: desired, applied, in_sync), members "
            "(eligible, why, ping_ok, holding, host, version, started, config_revision, "
            "kernel_settings), standby, takeover, reals (per real "
            "server: state, policy, reason, since, detail, each checker's view), "
            "unknown_keys, malformed_keys, health_problems.",
        ),
    ] = False,
    *,
    conn: Conn,
) -> None:
    """Show the cluster as etcd holds it: each group's leader, term and last change;
    each member's eligibility, why, and the addresses it holds; keys etcdha does
    not know are reported, never fatal."""
    ks = conn.keyspace

    async def body(store: Store) -> dict[str, Any]:
        kvs, revision = await store.get_prefix(ks.root)
        report = collect(kvs, conn, revision)
        reals, problems = health_report(ks, kvs)
        report["reals"] = [r.to_json() for r in reals]
        report["health_problems"] = problems
        return report

    report = conn.run(body)
    if as_json:
        out_json(report)
    else:
        _print(report)
    for problem in (report["config"] or {}).get("problems", []):
        err(f"error: {problem}")
    for key in report["unknown_keys"]:
        err(f"warning: {key}: not a key etcdha writes; left alone")
    for problem in report["health_problems"]:
        err(f"warning: {problem}")
    for key in report["malformed_keys"]:
        err(f"warning: {key}: value is not the JSON etcdha writes; ignored")
