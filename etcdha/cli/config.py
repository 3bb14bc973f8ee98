"""`etcdha config ...`: validate, import, apply, show, diff, schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from etcdha.cli.common import EXIT_CODES_HELP, Conn, Exit, err, fail, out_json, with_conn
from etcdha.configdb import (
    ConfigConflict,
    apply_config,
    describe,
    diff_text,
    json_value,
    read_config,
)
from etcdha.spec import ClusterSpec
from etcdha.spec_load import Loaded, SpecInvalid, load_file, to_yaml
from etcdha.store import Store

app = typer.Typer(
    help="Validate, import, apply and inspect the cluster spec stored in etcd.\n\n"
    + EXIT_CODES_HELP,
    no_args_is_help=True,
)

SpecFile = Annotated[
    Path, typer.Argument(help="Cluster spec, YAML (see `etcdha config schema`).", metavar="FILE")
]


def _load_or_fail(path: Path) -> Loaded:
    try:
        loaded = load_file(path)
    except SpecInvalid as e:
        for problem in e.problems:
            err(f"error: {problem}")
        fail(f"{path}: refused, {len(e.problems)} problem(s); nothing was changed")
    for warning in loaded.warnings:
        err(f"warning: {warning}")
    return loaded


@app.command()
def validate(file: SpecFile) -> None:
    """Check a spec file without touching etcd; every problem is printed as
    FILE:LINE: FIELD: WHAT IS WRONG."""
    loaded = _load_or_fail(file)
    typer.echo(f"{file}: valid ({describe(loaded.spec)})")


@app.command("import")
def import_(
    ldirectord: Annotated[
        Path | None,
        typer.Option(
            "--ldirectord",
            help="ldirectord.cf to read. Default: the file each `ldirectord::path` in "
            "haresources names (looked up beside haresources when that path does not exist).",
        ),
    ] = None,
    haresources: Annotated[
        Path | None,
        typer.Option("--haresources", help="Heartbeat haresources file (one group per line)."),
    ] = None,
    ha_cf: Annotated[
        Path | None,
        typer.Option("--ha-cf", help="Heartbeat ha.cf (nodes, timings, ping nodes)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Write the spec YAML here instead of stdout."),
    ] = None,
    checks_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where external check scripts must live (ldirectord checkcommand) "
            "[default: /usr/lib/etcdha/checks].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Translate Heartbeat v1 (ha.cf, haresources) and ldirectord.cf files into a spec.

    Each directive is reported on stderr as mapped, not needed (with what replaces
    it), or refused with FILE:LINE when ignoring it would change behaviour. A refused
    import writes nothing.
    """
    if ldirectord is None and haresources is None and ha_cf is None:
        fail("give at least one of --ha-cf, --haresources, --ldirectord", Exit.USAGE)
    # The importers are loaded by this command only.
    from etcdha.legacy import DEFAULT_CHECKS_DIR, ImportRefused, import_legacy

    try:
        result = import_legacy(
            ha_cf, haresources, ldirectord, checks_dir=checks_dir or DEFAULT_CHECKS_DIR
        )
    except ImportRefused as e:
        for problem in e.problems:
            err(f"error: {problem}")
        fail(f"import refused, {len(e.problems)} problem(s); nothing was written")
    for note in result.notes:
        err(str(note))
    for warning in result.warnings:
        err(f"warning: {warning}")
    text = to_yaml(result.spec)
    if output is None:
        typer.echo(text, nl=False)
    else:
        tmp = output.with_name(f".{output.name}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(output)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            fail(f"cannot write {output}: {e.strerror}")
        err(f"wrote {output} ({describe(result.spec)})")


@app.command()
@with_conn
def apply(
    file: SpecFile,
    expect_revision: Annotated[
        int | None,
        typer.Option(
            help="Apply only if the stored config is at this mod revision (0: none yet), "
            "as printed by `config show --json`.",
        ),
    ] = None,
    *,
    conn: Conn,
) -> None:
    """Validate FILE and store it as the cluster's config in one etcd transaction.

    The write is guarded by the config's mod revision as read, so of two concurrent
    applies exactly one wins; the other exits 3 and changes nothing. Prints the diff
    against the stored config; every agent picks the new config up live.
    """
    loaded = _load_or_fail(file)

    async def body(store: Store) -> None:
        try:
            result = await apply_config(
                store,
                conn.keyspace,
                loaded.spec,
                source=str(file),
                expect_revision=expect_revision,
            )
        except ConfigConflict as e:
            fail(
                f"conflict: {e}. Review `etcdha config diff {file}` and apply again.", Exit.CONFLICT
            )
        if not result.changed:
            err(f"no change: {conn.keyspace.config()} already holds this spec")
            return
        typer.echo(result.diff, nl=False)
        err(f"applied {file} to {conn.keyspace.config()} at revision {result.revision}")

    conn.run(body)


@app.command()
@with_conn
def show(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the stored JSON with its revisions.")
    ] = False,
    full: Annotated[bool, typer.Option(help="Include fields left at their default.")] = False,
    *,
    conn: Conn,
) -> None:
    """Print the config stored in etcd, as YAML (or JSON with --json)."""

    async def body(store: Store) -> None:
        stored = await read_config(store, conn.keyspace)
        if stored is None:
            fail(
                f"no config in cluster {conn.keyspace.cluster!r} ({conn.keyspace.config()}); "
                "store one with `etcdha config apply FILE`"
            )
        if as_json:
            out_json(
                {
                    "key": stored.kv.key,
                    "mod_revision": stored.kv.mod_revision,
                    "create_revision": stored.kv.create_revision,
                    "valid": stored.problem is None,
                    "problems": [str(p) for p in stored.problem.problems] if stored.problem else [],
                    "config": json_value(stored.kv),
                }
            )
        elif stored.spec is not None:
            typer.echo(to_yaml(stored.spec, minimal=not full), nl=False)
        if stored.problem is not None:
            for problem in stored.problem.problems:
                err(f"error: {problem}")
            fail(f"the config stored at {stored.kv.key} is not a valid spec")

    conn.run(body)


@app.command()
@with_conn
def diff(
    file: SpecFile,
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="Exit 1 when there are differences.")
    ] = False,
    *,
    conn: Conn,
) -> None:
    """Show what `config apply FILE` would change, as a unified diff of all fields."""
    loaded = _load_or_fail(file)

    async def body(store: Store) -> bool:
        stored = await read_config(store, conn.keyspace)
        old: ClusterSpec | None = stored.spec if stored else None
        text = diff_text(old, loaded.spec, f"etcd:{conn.keyspace.config()}", str(file))
        typer.echo(text, nl=False)
        if not text:
            err("no differences")
        return bool(text)

    if conn.run(body) and exit_code:
        raise typer.Exit(int(Exit.REFUSED))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the cluster spec."""
    typer.echo(json.dumps(ClusterSpec.model_json_schema(mode="validation"), indent=2))
