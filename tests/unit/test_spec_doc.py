"""docs/spec.md is what scripts/gen_spec_doc.py makes of the spec's schema today."""

from __future__ import annotations

import difflib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from etcdha.spec import ClusterSpec
from etcdha.spec_load import load_text

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_spec_doc", REPO / "scripts/gen_spec_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_committed_doc_is_the_generated_one(generator: ModuleType) -> None:
    committed = (REPO / "docs" / "spec.md").read_text(encoding="utf-8")
    generated: str = generator.render()
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            generated.splitlines(keepends=True),
            "docs/spec.md (committed)",
            "scripts/gen_spec_doc.py (now)",
        )
    )
    assert not diff, f"docs/spec.md is stale; run .venv/bin/python scripts/gen_spec_doc.py\n{diff}"


def test_every_field_has_a_meaning(generator: ModuleType) -> None:
    missing: list[str] = generator.fields_without_meaning()
    assert not missing, (
        "give these fields a description in etcdha/spec.py (or a note in "
        f"scripts/gen_spec_doc.py): {', '.join(missing)}"
    )


def test_every_field_of_the_schema_is_in_the_doc() -> None:
    doc = (REPO / "docs" / "spec.md").read_text(encoding="utf-8")
    schema = ClusterSpec.model_json_schema()
    for name, definition in [("ClusterSpec", schema), *schema["$defs"].items()]:
        for field in definition.get("properties", {}):
            assert f".{field}` |" in doc or f"| `{field}` |" in doc, f"{name}.{field}"


def test_the_example_is_a_valid_spec_without_warnings() -> None:
    doc = (REPO / "docs" / "spec.md").read_text(encoding="utf-8")
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    loaded = load_text(example, "docs/spec.md")
    assert loaded.warnings == []
    assert [g.name for g in loaded.spec.groups] == ["web"]
