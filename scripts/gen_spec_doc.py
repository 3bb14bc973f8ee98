"""Write docs/spec.md: the cluster spec field by field, from its JSON schema.

    .venv/bin/python scripts/gen_spec_doc.py           rewrite docs/spec.md
    .venv/bin/python scripts/gen_spec_doc.py --check   exit 1 if docs/spec.md is stale

The field tables come from `ClusterSpec.model_json_schema()`: each field's path,
type, default and meaning. The meaning is the field's description in
etcdha/spec.py, after a note from NOTES below where that description is missing
or only says where the default comes from. The introduction and the example are
written here by hand; the example is validated on every run. tests/unit/
test_spec_doc.py fails when docs/spec.md differs from what this prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from etcdha import spec_types
from etcdha.spec import ClusterSpec
from etcdha.spec_load import load_text

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "spec.md"

Schema = dict[str, Any]

# The value types of etcdha/spec_types.py: the name the tables use for each.
VALUE_TYPES: dict[str, Any] = {
    "duration": spec_types.Duration,
    "IP:port": spec_types.Endpoint,
    "real address": spec_types.RealAddress,
    "interface address": spec_types.InterfaceAddress,
    "IP address": spec_types.HostAddress,
}

# Meanings for fields whose description in etcdha/spec.py is missing or only
# names the origin of the default, keyed by "Model.field".
NOTES: dict[str, str] = {
    "ClusterSpec.schema_version": "version of this format",
    "ClusterSpec.nodes": "the directors; each a name, or an object with `name`",
    "ClusterSpec.election": "leader election: lease, failback, ping nodes (Heartbeat's ha.cf)",
    "ClusterSpec.health_policy": "how the verdicts of several checkers make one: `leader` "
    "(the leading director's own checker decides), or `majority`, `all` or `any` of the "
    "live checkers",
    "ClusterSpec.groups": "resource groups, one per haresources line; each elects its own leader",
    "ClusterSpec.virtual_services": "IPVS virtual services (ldirectord.cf's virtual= sections)",
    "Node.name": "the node's name, as `etcdha agent start --node` gives it (default there: "
    "the host name)",
    "Group.name": "the group's name; its leader key is `leader/<name>`",
    "AddressResource.type": "`address`; may be left out",
    "AddressResource.address": "an address the group's leader holds (Heartbeat's IPaddr)",
    "AddressResource.label": "interface label of the address (`eth0:web`), as IPaddr's",
    "IPVSResource.type": "`ipvs`; the whole resource may be written as the bare word `ipvs`: "
    "the IPVS table of the group's virtual services",
    "ScriptResource.type": "`script`; may be left out",
    "ScriptResource.path": "absolute path of the script",
    "ScriptResource.args": "arguments given before start, stop or status",
    "ScriptResource.timeout": "a call still running then is killed",
    "Announce.count": "announcements sent per address",
    "Announce.interval": "time between two announcements",
    "Election.ping_interval": "time between two rounds of pings",
    "Election.ping_timeout": "how long a ping waits for its answer",
    "VirtualService.fwmark": "firewall mark of a fwmark service (instead of `address`)",
    "VirtualService.scheduler": "IPVS scheduler (rr, wrr, lc, wlc, sh, ...)",
    "VirtualService.scheduler_flags": "scheduler flags (ipvsadm -b: sh-fallback, sh-port, ...)",
    "VirtualService.persistence": "client persistence (ldirectord's persistent= and netmask=)",
    "VirtualService.fallback": "the server that serves when every real is down",
    "VirtualService.health_policy": "overrides the cluster's `health_policy` for this service",
    "VirtualService.check": "how the reals are checked",
    "VirtualService.reals": "the real servers",
    "Persistence.timeout": "how long a client stays with its real after its last connection",
    "Fallback.address": "the fallback server (ldirectord's fallback=)",
    "Fallback.forward": "how IPVS forwards to it, as for reals",
    "Real.address": "the real server",
    "Real.forward": "how IPVS forwards to it: `gate` (direct routing), `masq` (NAT), "
    "`ipip` (tunnel)",
    "Real.weight": "its IPVS weight while up",
    "Real.upper_threshold": "connections above which IPVS sends it no new ones",
    "Real.lower_threshold": "connections below which IPVS uses it again after the upper "
    "threshold; 0: no limit",
    "Real.receive": "overrides the check's receive for this real",
    "Check.type": "`negotiate` (speak `service`), `connect` (open a connection), `ping`, "
    "`external` (run `command`), `on` (always up) or `off` (always down)",
    "Check.http_method": "method of http and https checks",
    "Check.dns_type": "record type a dns check asks for",
    "Check.verify_tls": "https checks verify the real's certificate",
    "Check.login": "user name of checks that log in (ftp, imap, pop, mysql, pgsql, ...)",
    "Check.password": "password that goes with `login`",
    "Check.database": "database a mysql, pgsql or oracle check connects to",
    "Check.secret": "shared secret of a radius check",
    "Check.interval": "time between two checks of one real",
    "Check.failure_count": "consecutive failures that mark a real down",
}

INTRO = """\
# The cluster spec

One cluster spec describes a whole etcdha cluster: its directors, how they elect
a leader, the resource groups the leader holds (addresses, the IPVS table,
scripts) and the virtual services with their real servers and checks. It
replaces Heartbeat's ha.cf and haresources and ldirectord's ldirectord.cf;
`etcdha config import` translates those (see `docs/import.md`).

People write it as YAML. `etcdha config validate FILE` checks it without
touching etcd and names every problem as `file:line: field: what is wrong`;
`etcdha config apply FILE` stores it, in one guarded transaction, under
`<prefix>/<cluster>/config` as JSON with every field written out, and every
agent picks it up live. `etcdha config show` prints the stored spec with the
fields left at their default omitted (`--full` prints them all, `--json` the
stored JSON), and `etcdha config schema` prints its JSON Schema.

Rules that hold everywhere:

- Unknown fields are refused (a misspelt field never silently falls back to
  its default).
- Defaults follow ldirectord's code and Heartbeat where they have one;
  `docs/spec-defaults.md` lists each default and its origin.
- Durations are written `500ms`, `2s`, `1.5m` or `1h`; a bare number is
  seconds. Addresses are IPv4 or IPv6; IPv6 with a port goes in brackets.
- Names (nodes, groups) are letters, digits, `.`, `_` and `-`, starting with a
  letter or digit, at most 63 characters.

The tables below are generated from the spec's JSON Schema by
`scripts/gen_spec_doc.py`; edit the descriptions in `etcdha/spec.py` (or the
notes in the script), not this file.
"""

EXAMPLE = """\
schema_version: 1
nodes: [node1, node2]            # in order of preference
election:
  lease_ttl: 30s                 # Heartbeat's deadtime
  keepalive_interval: 2s         # Heartbeat's keepalive
  ping_nodes: [192.168.1.1]      # a director that reaches none is not eligible
groups:
- name: web
  node: node1                    # preferred; auto_failback brings the group back
  resources:                     # started in this order, stopped in reverse
  - address: 192.168.1.200/24    # the VIP
    interface: eth0
  - address: 192.168.2.200/24    # the DIP, the real servers' gateway
    interface: eth1
  - ipvs                         # the IPVS table of the services below
virtual_services:
- address: 192.168.1.200:80
  scheduler: rr
  quiescent: true                # a down real keeps weight 0
  check:                         # service http: chosen by port 80
    request: /test.html
    receive: ok
    interval: 2s
  reals:
  - {address: 192.168.2.12:80, forward: masq}
  - {address: 192.168.2.6:80, forward: masq}
  fallback:
    address: 127.0.0.1:80        # served when every real is down
"""


@dataclass(frozen=True)
class Row:
    path: str
    type: str
    default: str
    meaning: str


@dataclass(frozen=True)
class Section:
    title: str
    about: str
    rows: list[Row]


class SchemaDoc:
    """Walks the schema from the top, one section per object, in order of appearance."""

    def __init__(self) -> None:
        self.schema: Schema = ClusterSpec.model_json_schema(mode="validation")
        self.defs: dict[str, Schema] = self.schema.get("$defs", {})
        self.value_types: dict[str, str] = {}  # description -> type name
        self.value_type_text: dict[str, str] = {}  # type name -> description
        for name, annotated in VALUE_TYPES.items():
            found: Schema = TypeAdapter(annotated).json_schema()
            self.value_types[found["description"]] = name
            self.value_type_text[name] = found["description"]
        self.duration_pattern = TypeAdapter(spec_types.Duration).json_schema()["pattern"]
        self.name_pattern = spec_types.NAME_RE
        self.sections: list[Section] = []
        self.without_meaning: list[str] = []
        self.notes_used: set[str] = set()

    # -- schema helpers

    def resolve(self, schema: Schema) -> tuple[str | None, Schema]:
        ref = schema.get("$ref")
        if ref is None:
            return None, schema
        name = str(ref).rsplit("/", 1)[-1]
        return name, self.defs[name]

    @staticmethod
    def without_null(schema: Schema) -> tuple[Schema, bool]:
        branches = schema.get("anyOf")
        if not branches:
            return schema, False
        kept = [b for b in branches if b.get("type") != "null"]
        if len(kept) == 1:
            return {**{k: v for k, v in schema.items() if k != "anyOf"}, **kept[0]}, True
        return schema, len(kept) != len(branches)

    def value_type(self, schema: Schema) -> str | None:
        if schema.get("pattern") == self.duration_pattern:
            return "duration"
        return self.value_types.get(str(schema.get("description", "")))

    def type_text(self, schema: Schema) -> str:
        schema, _ = self.without_null(schema)
        if "anyOf" in schema:
            return " or ".join(
                self.type_text(b) for b in schema["anyOf"] if b.get("type") != "null"
            )
        name, target = self.resolve(schema)
        if "enum" in target:
            return "one of " + ", ".join(f"`{v}`" for v in target["enum"])
        if "const" in target:
            const = target["const"]
            return f"`{const}`" if isinstance(const, str) else f"`{json.dumps(const)}`"
        if name is not None and "properties" in target:
            return "object"
        if "oneOf" in target:
            return "resource (by `type`)"
        kind = target.get("type")
        if kind == "array":
            return "list of " + self.type_text(target.get("items", {}))
        if kind == "object":
            values = self.type_text(target.get("additionalProperties", {"type": "string"}))
            return f"map of string to {values}"
        if kind == "string":
            found = self.value_type(schema)
            if found is not None:
                return found
            if target.get("pattern") == self.name_pattern:
                return "name"
            return "non-empty string" if target.get("minLength") else "string"
        if kind == "integer":
            low = target.get("minimum")
            if "exclusiveMinimum" in target:
                low = target["exclusiveMinimum"] + 1
            high = target.get("maximum")
            if low is not None and high is not None:
                return f"integer {low} to {high}"
            if low is not None:
                return f"integer, at least {low}"
            return "integer"
        return str(kind)

    def default_text(self, prop: Schema, required: bool, shown_type: str) -> str:
        if required:
            return "required"
        if "default" not in prop:
            # A default factory: an empty list or map, or an object of defaults.
            kind = self.without_null(prop)[0].get("type")
            return "empty" if kind in ("array", "object") else "all defaults"
        value = prop["default"]
        if value is None:
            return "unset"
        if shown_type == "duration":
            return f"`{spec_types.format_duration(float(value))}`"
        if isinstance(value, str):
            return f"`{value}`"
        return f"`{json.dumps(value)}`"

    def meaning(self, model: str, field: str, prop: Schema, target: Schema) -> str:
        key = f"{model}.{field}"
        note = NOTES.get(key)
        if note is not None:
            self.notes_used.add(key)
        description = prop.get("description")
        if description is None or description in self.value_types:
            # Only a value type's own description (or none): fall back to the model's.
            description = target.get("description") if "properties" in target else None
        text = "; ".join(x for x in (note, description) if x)
        if not text:
            self.without_meaning.append(key)
        return text.replace("|", "\\|").replace("\n", " ")

    # -- the walk

    def walk(self) -> list[Section]:
        self.section("ClusterSpec", "top level", "", self.schema)
        return self.sections

    def section(self, model: str, title: str, path: str, schema: Schema) -> None:
        rows: list[Row] = []
        later: list[tuple[str, str, str, Schema]] = []
        required = set(schema.get("required", []))
        for field, prop in schema.get("properties", {}).items():
            full = f"{path}.{field}" if path else field
            plain, _ = self.without_null(prop)
            item = plain.get("items") if plain.get("type") == "array" else None
            name, target = self.resolve(item if item is not None else plain)
            shown = self.type_text(prop)
            rows.append(
                Row(
                    f"`{full}`",
                    shown,
                    self.default_text(prop, field in required, shown),
                    self.meaning(model, field, prop, target),
                )
            )
            sub = f"{full}[]" if item is not None else full
            if name is not None and "properties" in target:
                later.append((name, f"`{sub}`", sub, target))
            elif "oneOf" in target:
                for variant in target["oneOf"]:
                    vname, vschema = self.resolve(variant)
                    kind = vschema["properties"]["type"]["const"]
                    assert vname is not None
                    later.append((vname, f"`{sub}` of type `{kind}`", sub, vschema))
        self.sections.append(Section(title, str(schema.get("description", "")), rows))
        for args in later:
            self.section(*args)


def render() -> str:
    """docs/spec.md as it must read; raises if the example is not a valid spec."""
    example = load_text(EXAMPLE, "docs/spec.md example")
    if example.warnings:
        raise ValueError(f"the example draws warnings: {'; '.join(map(str, example.warnings))}")
    doc = SchemaDoc()
    sections = doc.walk()
    stale = sorted(set(NOTES) - doc.notes_used)
    if stale:
        raise ValueError(f"NOTES name fields the spec does not have: {', '.join(stale)}")
    out = [INTRO, "## Example\n", "```yaml\n" + EXAMPLE + "```\n"]
    out.append("## Value types\n")
    out.append("| type | written as |\n|---|---|")
    for name in VALUE_TYPES:
        out.append(f"| {name} | {doc.value_type_text[name]} |")
    out.append(
        "| name | letters, digits, `.`, `_` and `-`, starting with a letter or digit: "
        f"`{spec_types.NAME_RE}` |\n"
    )
    out.append("## Fields\n")
    out.append(
        "One table per object, in the order they appear. `[]` stands for any item of a "
        'list. Default "unset" means the field is absent (null in the stored JSON); '
        '"all defaults" means an object whose fields all take their defaults.\n'
    )
    for section in sections:
        out.append(f"### {section.title}\n")
        if section.about:
            out.append(section.about.strip() + "\n")
        out.append("| path | type | default | meaning |\n|---|---|---|---|")
        for row in section.rows:
            out.append(f"| {row.path} | {row.type} | {row.default} | {row.meaning} |")
        out.append("")
    return "\n".join(out)


def fields_without_meaning() -> list[str]:
    doc = SchemaDoc()
    doc.walk()
    return doc.without_meaning


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/spec.md from the spec's schema.")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if docs/spec.md differs; write nothing"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run scripts/gen_spec_doc.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
