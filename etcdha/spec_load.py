"""Loading a cluster spec from YAML or JSON with messages that name the place.

Every problem becomes `file:line: field.path: what is wrong`. The line comes
from the YAML node the field path points at (or its nearest parent), so a
message leads the operator to the right line even for cross-field rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from etcdha.spec import ClusterSpec, SpecError, resource_type_of

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecInvalid(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class Loaded:
    spec: ClusterSpec
    warnings: list[Problem] = field(default_factory=list)


def format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a silent override loses input)."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_map(node: yaml.Node, path: Path_, out: dict[Path_, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _line_map(value_node, (*path, key), out)
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*path, i), out)


def _line_for(lines: dict[Path_, int], path: Path_) -> int | None:
    p = path
    while p:
        if p in lines:
            return lines[p]
        p = p[:-1]
    return lines.get(())


def _parse_text_path(text: str) -> Path_:
    """Inverse of format_path for the paths SpecError reports."""
    parts: list[str | int] = []
    for chunk in text.replace("]", "").split("."):
        name, *indices = chunk.split("[")
        if name:
            parts.append(name)
        parts.extend(int(i) for i in indices)
    return tuple(parts)


def _clean_loc(loc: tuple[str | int, ...], data: Any) -> Path_:
    """Drop pydantic's union tags from an error location, keeping the data path."""
    out: list[str | int] = []
    cur = data
    for part in loc:
        if isinstance(cur, dict):
            if part in cur:
                out.append(part)
                cur = cur[part]
            elif part != resource_type_of(cur) and not str(part).startswith("function-"):
                out.append(part)  # a missing field: name it, nothing below it exists
                cur = None
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(part)
            cur = cur[part]
        elif not str(part).startswith("function-"):
            break
    return tuple(out)


def _message(err: Any) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err["type"] == "extra_forbidden":
        return "unknown field (check its spelling; `etcdha config schema` lists the fields)"
    if err["type"] == "missing":
        return "is required"
    if err["type"] in ("literal_error", "enum") or err["type"].endswith("_type"):
        return f"{err['input']!r}: {msg.lower()}"
    return msg


def validate_data(data: Any, source: str, lines: dict[Path_, int] | None = None) -> Loaded:
    """Validate already-parsed data; raise SpecInvalid listing every problem."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise SpecInvalid([Problem(source, 1, "", "the spec must be a mapping of fields")])
    try:
        spec = ClusterSpec.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            path = _clean_loc(tuple(err["loc"]), data)
            problems.append(
                Problem(source, _line_for(lines, path), format_path(path), _message(err))
            )
        raise SpecInvalid(_dedupe(problems)) from None
    try:
        warnings = spec.check()
    except SpecError as e:
        raise SpecInvalid(
            [Problem(source, _line_for(lines, _parse_text_path(p)), p, m) for p, m in e.errors]
        ) from None
    return Loaded(
        spec,
        [Problem(source, _line_for(lines, _parse_text_path(p)), p, m) for p, m in warnings],
    )


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for p in problems:
        key = (p.line, p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise SpecInvalid([Problem(source, line, "", f"not valid YAML: {e.problem}")]) from None
    except yaml.YAMLError as e:
        raise SpecInvalid([Problem(source, None, "", f"not valid YAML: {e}")]) from None
    lines: dict[Path_, int] = {}
    if node is not None:
        _line_map(node, (), lines)
    return data, lines


def load_text(text: str, source: str) -> Loaded:
    data, lines = parse_yaml(text, source)
    if data is None:
        raise SpecInvalid([Problem(source, None, "", "the file is empty")])
    return validate_data(data, source, lines)


def load_file(path: Path | str) -> Loaded:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecInvalid([Problem(str(p), None, "", f"cannot read: {e.strerror}")]) from None
    except UnicodeDecodeError as e:
        raise SpecInvalid([Problem(str(p), None, "", f"not UTF-8 text: {e.reason}")]) from None
    return load_text(text, str(p))


def load_json(raw: bytes, source: str) -> Loaded:
    """The spec as stored in etcd (`config` key)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise SpecInvalid([Problem(source, None, "", f"not valid JSON: {e}")]) from None
    return validate_data(data, source)


def to_data(spec: ClusterSpec) -> dict[str, Any]:
    """Plain data in canonical form (durations as '2s'), defaults included."""
    data: dict[str, Any] = spec.model_dump(mode="json")
    return data


def to_json(spec: ClusterSpec) -> bytes:
    return json.dumps(to_data(spec), indent=None, sort_keys=False).encode()


def to_yaml(spec: ClusterSpec, *, minimal: bool = True) -> str:
    """YAML for people: with `minimal`, fields equal to their default are left out."""
    data = spec.model_dump(mode="json", exclude_defaults=minimal)
    for group in data.get("groups", []):
        # With defaults left out a resource's type is implied by its fields;
        # the ipvs resource has none, so it is written as the bare word.
        group["resources"] = [r or "ipvs" for r in group.get("resources", [])]
    data = {"schema_version": spec.schema_version, **data}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
