"""What the three legacy parsers share: notes, problems, origins, file reading.

Every value the importer puts into the spec remembers where it came from (an
`Origin`: file, line, directive), so that a problem found later by the spec's
own validation still points at the line of ha.cf, haresources or ldirectord.cf
that caused it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from etcdha.spec_load import Problem, SpecInvalid
from etcdha.spec_types import NAME_RE

NoteKind = Literal["mapped", "not-needed", "warning"]

DEFAULT_CHECKS_DIR = Path("/usr/lib/etcdha/checks")
NAME = re.compile(NAME_RE)


@dataclass(frozen=True)
class ImportNote:
    """One sentence about one directive: how it was mapped, or why it is not needed."""

    source: str
    line: int | None
    directive: str
    kind: NoteKind
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.directive}: {self.kind}: {self.message}"


class ImportRefused(SpecInvalid):
    """The legacy files cannot be imported; `problems` lists every reason found."""


@dataclass(frozen=True)
class Origin:
    source: str
    line: int | None
    directive: str


@dataclass
class Collector:
    notes: list[ImportNote] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def note(self, at: Origin, kind: NoteKind, message: str) -> None:
        self.notes.append(ImportNote(at.source, at.line, at.directive, kind, message))

    def mapped(self, at: Origin, message: str) -> None:
        self.note(at, "mapped", message)

    def not_needed(self, at: Origin, message: str) -> None:
        self.note(at, "not-needed", message.removeprefix("not needed: "))

    def warn(self, at: Origin, message: str) -> None:
        self.note(at, "warning", message)

    def refuse(self, at: Origin, message: str) -> None:
        self.problems.append(Problem(at.source, at.line, at.directive, message))

    def has_problem_at(self, source: str, line: int | None) -> bool:
        return any(p.source == source and p.line == line for p in self.problems)


def read_lines(path: Path, col: Collector, what: str) -> list[str] | None:
    """The file's lines without their '\\n' (a '\\r' stays, as the legacy tools read it)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        col.refuse(Origin(str(path), None, what), f"cannot read the file: {e.strerror}")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        col.refuse(
            Origin(str(path), None, what),
            f"not UTF-8 text (byte {e.start}): save the file as UTF-8 and import it again",
        )
        return None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """A dotted quad as the legacy tools mean it, or None.

    inet_aton() reads `012` as octal and Python refuses leading zeros; such an
    address is refused (by returning None) rather than guessed.
    """
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        return None


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def leading_zero_octet(text: str) -> bool:
    return any(len(o) > 1 and o.startswith("0") for o in text.split("."))


def valid_name(text: str) -> bool:
    return bool(NAME.match(text))
