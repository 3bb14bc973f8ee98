"""Perl regular expressions (ldirectord's `receive`) rewritten for Python's `re`.

ldirectord matches a check's answer with `$answer =~ /$receive/`: the pattern
comes from a variable, so only the regex engine's own syntax applies (no
interpolation, and `\\Q`, `\\U`, ... are not special there). Most of that
syntax means the same in Python 3.11, including possessive quantifiers, atomic
groups and `(?#...)` comments. The differences handled here:

* `\\z` is Python's `\\Z`; Perl's `\\Z` (end, or before a final newline) becomes
  `(?=\\n?\\Z)`; `\\G` is `\\A` for a single match.
* `\\h`, `\\H`, `\\v` (vertical space in Perl, one character in Python), `\\V`,
  `\\R`, `\\N` (not a newline), `\\e`, `\\cX`, `\\x{...}`, `\\o{...}`, `\\N{U+...}`.
* POSIX classes `[[:alpha:]]` (Python would read a plain set of characters).
* Named groups and references: `(?<n>...)`, `(?'n'...)`, `\\k<n>`, `\\g{n}`,
  `\\g{-1}`; conditions `(?(<n>)...)`.
* `(?^...:)` and scoped flags; `\\K` is dropped (it only moves where the
  reported match starts, not whether there is one).
* A backslash before a letter Perl does not know (`\\q`, `\\Q`, `\\E`, ...)
  matches that letter, as Perl does (with a warning).

Refused, because Python has no equivalent: Unicode properties (`\\p{...}`),
`\\X`, recursion (`(?R)`, `(?1)`, `(?&n)`), code (`(?{...})`), verbs (`(*FAIL)`),
branch reset `(?|...)`, `\\b{wb}`, a `(?i)` switch after the start of the
pattern, and the `n`, `l` and `xx` flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

H_SET = r"\t \xa0\u1680\u180e\u2000-\u200a\u202f\u205f\u3000"
V_SET = r"\n\x0b\f\r\x85\u2028\u2029"

POSIX = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r"\s",
    "blank": r" \t",
    "punct": r"!-/:-@\[-`{-~",
    "xdigit": "0-9A-Fa-f",
    "word": r"\w",
    "cntrl": r"\x00-\x1f\x7f",
    "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e",
    "ascii": r"\x00-\x7f",
}

PYTHON_ESCAPES = set("dDwWsSbBfnrt")
REFUSED_ESCAPES = {
    "p": "a Unicode property (\\p{...}) has no equivalent in Python's re",
    "P": "a Unicode property (\\P{...}) has no equivalent in Python's re",
    "X": "\\X (an extended grapheme cluster) has no equivalent in Python's re",
    "C": "\\C (a single byte) is gone from Perl and has no equivalent in Python's re",
}


class PerlRegexError(ValueError):
    """The pattern cannot be translated faithfully (the reason is the message)."""


@dataclass
class Translated:
    pattern: str
    changes: list[str] = field(default_factory=list)
    doubts: list[str] = field(default_factory=list)


def _char(code: int) -> str:
    """A code point as a Python regex escape."""
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class _Translator:
    def __init__(self, perl: str) -> None:
        self.p = perl
        self.i = 0
        self.out: list[str] = []
        self.changes: list[str] = []
        self.doubts: list[str] = []
        self.groups = 0

    def change(self, text: str) -> None:
        if text not in self.changes:
            self.changes.append(text)

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.p[j] if j < len(self.p) else ""

    def run(self) -> Translated:
        while self.i < len(self.p):
            c = self.p[self.i]
            if c == "\\":
                self.out.append(self.escape(in_class=False))
            elif c == "[":
                self.out.append(self.char_class())
            elif c == "(":
                self.out.append(self.group())
            else:
                self.out.append(c)
                self.i += 1
        pattern = "".join(self.out)
        try:
            re.compile(pattern)
        except re.error as e:
            raise PerlRegexError(f"cannot be translated to Python's re ({e})") from None
        return Translated(pattern, self.changes, self.doubts)

    # -- escapes ---------------------------------------------------------------

    def braced(self, what: str) -> str:
        """The text of `{...}` at the current position (after the escape letter)."""
        if self.peek() != "{":
            raise PerlRegexError(f"{what} needs {{...}}")
        end = self.p.find("}", self.i)
        if end < 0:
            raise PerlRegexError(f"{what}: missing '}}'")
        text = self.p[self.i + 1 : end]
        self.i = end + 1
        return text

    def escape(self, *, in_class: bool) -> str:
        p = self.p
        if self.i + 1 >= len(p):
            raise PerlRegexError("it ends with a lone backslash (Perl: trailing \\ in regex)")
        e = p[self.i + 1]
        self.i += 2
        if e.isdigit():
            digits = e
            while self.peek().isdigit():
                digits += self.peek()
                self.i += 1
            return "\\" + digits
        if e in PYTHON_ESCAPES:
            if e in "bB" and self.peek() == "{" and not in_class:
                raise PerlRegexError(f"\\{e}{{...}} (a Unicode boundary) has no Python equivalent")
            return "\\" + e
        if e in REFUSED_ESCAPES:
            raise PerlRegexError(REFUSED_ESCAPES[e])
        if e == "x":
            if self.peek() == "{":
                text = self.braced("\\x").strip().replace("_", "")
                try:
                    return _char(int(text or "0", 16))
                except ValueError:
                    raise PerlRegexError(f"\\x{{{text}}} is not a hexadecimal number") from None
            digits = ""
            while len(digits) < 2 and self.peek() and self.peek() in "0123456789abcdefABCDEF":
                digits += self.peek()
                self.i += 1
            return _char(int(digits or "0", 16))
        if e == "o":
            text = self.braced("\\o").strip()
            try:
                return _char(int(text, 8))
            except ValueError:
                raise PerlRegexError(f"\\o{{{text}}} is not an octal number") from None
        if e == "e":
            return "\\x1b"
        if e == "a":
            return "\\x07"
        if e == "c":
            ctl = self.peek()
            if not ctl:
                raise PerlRegexError("\\c needs a character after it")
            self.i += 1
            return _char(ord(ctl.upper()) ^ 64)
        if e == "N":
            if self.peek() == "{":
                name = self.braced("\\N")
                if name.startswith("U+"):
                    try:
                        return _char(int(name[2:], 16))
                    except ValueError:
                        raise PerlRegexError(f"\\N{{{name}}} is not a code point") from None
                return "\\N{" + name + "}"
            if in_class:
                raise PerlRegexError("\\N (not a newline) cannot stand inside [...]")
            self.change("\\N (any character but a newline) becomes [^\\n]")
            return "[^\\n]"
        if e in "hv":
            chars = H_SET if e == "h" else V_SET
            self.change(f"\\{e} becomes the set of characters Perl means by it")
            return chars if in_class else f"[{chars}]"
        if e in "HVR":
            if in_class:
                raise PerlRegexError(f"\\{e} inside [...] has no equivalent in Python")
            self.change(f"\\{e} becomes the set of characters Perl means by it")
            if e == "R":
                return f"(?:\\r\\n|[{V_SET}])"
            return f"[^{H_SET if e == 'H' else V_SET}]"
        if not in_class:
            if e == "z":
                self.change("\\z (end of text) becomes \\Z")
                return "\\Z"
            if e == "Z":
                self.change("\\Z (end, or before a final newline) becomes (?=\\n?\\Z)")
                return "(?=\\n?\\Z)"
            if e == "A":
                return "\\A"
            if e == "G":
                self.change("\\G (where the match starts) becomes \\A")
                return "\\A"
            if e == "K":
                self.change("\\K is dropped: it does not change whether the answer matches")
                return ""
            if e == "g":
                return self.group_reference()
            if e == "k":
                return self.named_reference()
        if e.isascii() and e.isalpha():
            doubt = f"\\{e} is no regex escape in Perl, which matches it as the letter {e}"
            if doubt not in self.doubts:
                self.doubts.append(doubt)
            return e
        return "\\" + e

    def group_reference(self) -> str:
        if self.peek() == "{":
            ref = self.braced("\\g")
        else:
            m = re.match(r"-?\d+", self.p[self.i :])
            if not m:
                raise PerlRegexError("\\g needs a group number or {name}")
            ref = m.group(0)
            self.i += len(ref)
        if re.fullmatch(r"\d+", ref):
            return "\\" + ref
        if re.fullmatch(r"-\d+", ref):
            number = self.groups + 1 + int(ref)
            if number < 1:
                raise PerlRegexError(f"\\g{{{ref}}} refers to a group before the first")
            self.change("relative group references (\\g{-N}) become absolute ones")
            return f"\\{number}"
        return f"(?P={ref})"

    def named_reference(self) -> str:
        opener = self.peek()
        closer = {"<": ">", "'": "'", "{": "}"}.get(opener)
        end = self.p.find(closer, self.i + 1) if closer else -1
        if end < 0:
            raise PerlRegexError("\\k needs a name in <>, '' or {}")
        name = self.p[self.i + 1 : end]
        self.i = end + 1
        self.change("named references (\\k<name>) become (?P=name)")
        return f"(?P={name})"

    # -- character classes -------------------------------------------------------

    def char_class(self) -> str:
        p = self.p
        start = self.i
        self.i += 1
        out = ["["]
        if self.peek() == "^":
            out.append("^")
            self.i += 1
        if self.peek() == "]":
            out.append("\\]")
            self.i += 1
        while True:
            c = self.peek()
            if not c:
                raise PerlRegexError(f"the [ at position {start + 1} is never closed")
            if c == "]":
                self.i += 1
                out.append("]")
                return "".join(out)
            if c == "\\":
                out.append(self.escape(in_class=True))
            elif c == "[" and self.peek(1) in ":=.":
                kind = self.peek(1)
                end = p.find(kind + "]", self.i + 2)
                if end < 0:
                    out.append("\\[")
                    self.i += 1
                    continue
                name = p[self.i + 2 : end]
                self.i = end + 2
                if kind != ":":
                    raise PerlRegexError(f"[{kind}{name}{kind}] is reserved syntax in Perl")
                if name.startswith("^") or name not in POSIX:
                    raise PerlRegexError(f"[:{name}:] has no equivalent in Python's re")
                self.change(f"[:{name}:] becomes {POSIX[name]}")
                out.append(POSIX[name])
            elif c in "[&~|":
                out.append("\\" + c)
                self.i += 1
            else:
                out.append(c)
                self.i += 1

    # -- groups ----------------------------------------------------------------

    def group(self) -> str:
        p = self.p
        rest = p[self.i :]
        if rest.startswith("(*"):
            raise PerlRegexError("backtracking verbs such as (*FAIL) have no equivalent in Python")
        if not rest.startswith("(?"):
            self.i += 1
            self.groups += 1
            return "("
        for prefix in ("(?:", "(?=", "(?!", "(?<=", "(?<!", "(?>", "(?P="):
            if rest.startswith(prefix):
                self.i += len(prefix)
                return prefix
        if rest.startswith("(?#"):
            end = p.find(")", self.i)
            if end < 0:
                raise PerlRegexError("a (?# comment is never closed")
            self.i = end + 1
            return ""
        m = re.match(r"\(\?(?:P?<([A-Za-z_]\w*)>|'([A-Za-z_]\w*)')", rest)
        if m:
            self.i += len(m.group(0))
            self.groups += 1
            if not rest.startswith("(?P<"):
                self.change("named groups (?<name>...) become (?P<name>...)")
            return f"(?P<{m.group(1) or m.group(2)}>"
        if rest.startswith("(?("):
            return self.condition()
        if re.match(r"\(\?(?:R|[+-]?\d|&|P>)", rest):
            raise PerlRegexError("recursion ((?R), (?1), (?&name)) has no equivalent in Python")
        if rest.startswith(("(?{", "(??{", "(?*")):
            raise PerlRegexError("embedded code has no equivalent in Python")
        if rest.startswith("(?|"):
            raise PerlRegexError("branch reset (?|...) has no equivalent in Python")
        m = re.match(r"\(\?(\^)?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])", rest)
        if not m:
            raise PerlRegexError(f"the group {rest[:6]!r}... is not one Python knows")
        return self.flags(m)

    def condition(self) -> str:
        rest = self.p[self.i :]
        m = re.match(r"\(\?\((\d+|<([A-Za-z_]\w*)>|'([A-Za-z_]\w*)'|[A-Za-z_]\w*)\)", rest)
        if not m or m.group(1).startswith(("R", "DEFINE")):
            raise PerlRegexError("this kind of condition (?(...)) has no equivalent in Python")
        self.i += len(m.group(0))
        name = m.group(2) or m.group(3) or m.group(1)
        return f"(?({name})"

    def flags(self, m: re.Match[str]) -> str:
        caret, on, off, end = m.group(1), m.group(2), m.group(3) or "", m.group(4)
        if "xx" in on or "n" in on + off or "l" in on + off:
            raise PerlRegexError(
                f"the flags in {m.group(0)!r} (n, l or xx) have no equivalent in Python"
            )
        keep_on = "".join(f for f in on if f in "imsxau")
        keep_off = "".join(f for f in off if f in "imsx")
        if caret:
            keep_off = "".join(f for f in "imsx" if f not in keep_on)
            self.change("(?^...) becomes an explicit list of flags")
        self.i += len(m.group(0))
        if end == ")":
            if self.out or keep_off:
                raise PerlRegexError(
                    f"{m.group(0)!r} after the start of the pattern switches flags for the "
                    "rest of its group; write (?flags:...) around the part it applies to"
                )
            return f"(?{keep_on})" if keep_on else ""
        if not keep_on and not keep_off:
            return "(?:"
        return f"(?{keep_on}{'-' + keep_off if keep_off else ''}:"


def translate(perl: str) -> Translated:
    """The Python equivalent of a Perl pattern; PerlRegexError says why there is none."""
    return _Translator(perl).run()


def exact(text: str) -> str:
    """A pattern that matches exactly `text` (ldirectord's DNS check compares strings)."""
    return "^" + re.escape(text) + "$"
