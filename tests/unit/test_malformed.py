"""Every malformed case of tests/malformed_cases.py, through the Python API."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from malformed_cases import CASES, Case

from etcdha.legacy import ImportRefused, import_legacy
from etcdha.spec_load import Problem, SpecInvalid, load_file


def problems_of(case: Case, tmp: Path) -> list[Problem]:
    for name, text in case.files.items():
        (tmp / name).write_text(text)
    if case.kind == "spec":
        with pytest.raises(SpecInvalid) as spec_error:
            load_file(tmp / "cluster.yaml")
        return spec_error.value.problems
    paths = {name: tmp / name for name in case.files}
    with pytest.raises(ImportRefused) as import_error:
        import_legacy(
            paths.get("ha.cf"),
            paths.get("haresources"),
            paths.get("ldirectord.cf"),
            root=tmp / "no-such-root",
        )
    return import_error.value.problems


def shown(p: Problem) -> str:
    return f"{Path(p.source).name}:{p.line}: {p.path}: {p.message}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_names_file_line_and_reason(case: Case, tmp_path: Path) -> None:
    found = problems_of(case, tmp_path)
    assert any(
        Path(p.source).name == case.file
        and p.line == case.line
        and case.message in f"{p.path}: {p.message}"
        for p in found
    ), "\n".join(shown(p) for p in found)


def test_the_issue_example_reads_exactly(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == "spec-real-not-an-ip-port")
    found = problems_of(case, tmp_path)
    assert [shown(p) for p in found] == [
        "cluster.yaml:23: virtual_services[0].reals[1].address: "
        "'192.168.2.300:80' is not an IP:port"
    ]


def test_the_table_is_broad() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    per_file = Counter(c.file for c in CASES)
    assert {"ha.cf", "haresources", "ldirectord.cf", "cluster.yaml"} <= set(per_file)
    assert all(n >= 5 for n in per_file.values()), per_file
