r"""Answer strings: LaTeX clean-up, the canonical comparison form, numbers, and list structure.

Two levels of rewriting, both keeping distinct values distinct:

* :func:`light_latex` — what math-verify receives: still LaTeX, with what it misreads spelled
  out (sizing and style commands, ``\dfrac``, thousands markers, ellipses, primes, a stray
  trailing backslash); :func:`clean_latex` goes further (``\text{}`` wrappers, spacing) for
  comparing written forms and numbers.
* :func:`normalize_answer` — the canonical form two answers are compared by as strings: the
  cleaned text without units, percent and dollar signs, a leading ``x =``, thousands separators
  and spaces.

:func:`split_items` reads a comma list — ``(1, 2)``, ``[0, 1)``, ``\{a, b\}``, ``1, 2, \ldots``
— into its brackets and parts, so lists can be compared part by part.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from envs.grading.extract import strip_delimiters

__all__ = [
    "ELLIPSIS",
    "Items",
    "as_number",
    "clean_latex",
    "comma_decimal",
    "is_plain",
    "light_latex",
    "normalize_answer",
    "split_items",
    "split_percent",
]

ELLIPSIS = r"\ldots"
r"""The one spelling of an ellipsis after :func:`light_latex` (``\dots``, ``\cdots``, ``...``)."""

# Unit words dropped after a number; plurals are derived. Kept short on purpose: a word that
# can also be a variable name ("m", "s") would merge distinct answers.
_UNITS = [
    "cm", "mm", "km", "meter", "metre", "inch", "inches", "foot", "feet", "ft", "yard", "mile",
    "mph", "second", "sec", "minute", "min", "hour", "hr", "day", "week", "month", "year",
    "degree", "dollar", "cent", "pound", "kg", "gram", "unit", "point", "square", "sq",
    "centimeter", "kilometer", "liter", "litre", "people", "student", "way",
]  # fmt: skip
_UNIT_ALT = "|".join(sorted({*_UNITS, *(u + "s" for u in _UNITS), *(u + "es" for u in _UNITS)}))
_UNIT_WORD = re.compile(rf"(?:(?:square|sq\.?|cubic)\s+)?(?:{_UNIT_ALT})\.?", re.IGNORECASE)
_TEXT_CMD = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|textup|textsf|texttt|mbox|mathrm|operatorname)"
    r"\s*\{([^{}]*)\}(\s*\^\s*\{?\s*[23]\s*\}?)?"
)
# Font styles do not change what a symbol names: \mathcal{B} is the B of the problem.
# \mathbb is left alone: \mathbb{R} is a set, not the letter R.
_STYLE_CMD = re.compile(
    r"\\(?:mathcal|mathscr|mathfrak|mathsf|mathtt|mathbf|mathit|boldsymbol|bm|pmb)"
    r"\s*\{([^{}]*)\}"
    r"|\\mathrm\s*\{\s*([A-Za-z])\s*\}"  # an upright letter (\mathrm{e}) is the letter
)
_POWER = r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?"
_NUMBER_THEN_UNIT = re.compile(
    rf"^\s*([-+]?[\d.,]*\d)\s*(?:{_UNIT_WORD.pattern}){_POWER}\s*$", re.IGNORECASE
)
_PERCENT_WORD = re.compile(
    r"\\text\s*\{\s*(?:percent|percentage|pct)\s*\}|\b(?:percent|percentage|pct)\b", re.I
)
_COMMANDS = (
    r"(?:[dtc]?frac|sqrt|text|mathrm|mathbf|boxed|left|right|begin|end|cdot|times|div|pi|infty"
    r"|pm|mp|le|ge|leq|geq|neq"
    r"|sin|cos|tan|log|ln|exp|alpha|beta|gamma|theta|lambda|sigma|omega)(?![A-Za-z])"
)
# Rewrites that keep the text LaTeX as math-verify reads it (\text{} and spacing stay: it
# knows them), but spell what it misreads or drops.
_LIGHT: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # "\\dfrac" (a doubled backslash, as over-escaped text has it) is "\dfrac"; "\\" before
    # other letters stays a row break ("1\\x" in a matrix).
    (re.compile(rf"(?<!\\)\\\\(?={_COMMANDS})"), r"\\"),
    (re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])"), ""),
    (re.compile(r"\\[dtc]frac(?![A-Za-z])"), r"\\frac"),
    (re.compile(r"\\displaystyle(?![A-Za-z])"), ""),
    # Thousands markers between digit groups, 56,\!017,\!895, spelled 56{,}017{,}895: a
    # grouping comma, which no list split takes for a separator ((1,\!000, 2) has two parts).
    (re.compile(r"(?<=\d),\\[!,]\s*(?=\d{3}(?!\d))"), "{,}"),
    (re.compile(r"\\\$|\$"), ""),
    (
        re.compile(r"\\(?:ldots|dots|cdots|dotsc|dotsb|dotsm|dotso|hdots)(?![A-Za-z])|\.\.\."),
        r"\\ldots",
    ),
    # A prime names a different object (E' is not E); math-verify drops a bare "'".
    (re.compile(r"(?<=[A-Za-z])('+)"), lambda m: "^{" + r"\prime" * len(m.group(1)) + "}"),
]
_CLEANUPS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?<=\d)\{,\}(?=\d)"), ","),
    (re.compile(r"\\[,;:! ]|\\q?quad(?![A-Za-z])|~"), " "),
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])"), ""),
    # \frac12 -> \frac{1}{2}, \frac{a}2 -> \frac{a}{2}, \sqrt2 -> \sqrt{2}
    (re.compile(r"\\frac\s*(\d)\s*(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d)"), r"\\frac\1{\2}"),
    (re.compile(r"\\frac\s*(\d)\s*(\{[^{}]*\})"), r"\\frac{\1}\2"),
    (re.compile(r"\\sqrt\s*(\d)"), r"\\sqrt{\1}"),
]
_TRAILING = re.compile(r"(?:\s|\\(?![{}%$])|\.)+$")
_PERCENT = re.compile(r"\s*\\?%\s*")
_ASSIGNMENT = re.compile(
    r"^[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?\s*(?:=|\\in(?![A-Za-z]))\s*(.+)$", re.S
)
_THOUSANDS = re.compile(r"[-+]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")
_SPACED_THOUSANDS = re.compile(r"[-+]?[1-9]\d{0,2}(?: \d{3})+(?:\.\d+)?")
_COMMA_DECIMAL = re.compile(r"[-+]?\d+,\d+")
_PLAIN = re.compile(r"[^\W_][\w.,'()\-]*")


_CACHED = 2048


def _unwrap_text(m: re.Match[str]) -> str:
    content = m.group(1).strip()
    if _UNIT_WORD.fullmatch(content):
        return " "
    return " " + content + (m.group(2) or "") + " "


@lru_cache(maxsize=_CACHED)  # pure, and called several times per comparison
def light_latex(answer: str) -> str:
    r"""The answer as math-verify should read it: still LaTeX, with what it misreads spelled out.

    NFKC and the Unicode minus; one pair of enclosing math delimiters; ``\left``/``\right``
    and sizing; ``\dfrac``/``\tfrac`` → ``\frac``; font styles (``\mathcal{B}`` → ``B``);
    ``,\!`` thousands markers as ``{,}``; dollar signs; "percent" as ``\%``; every ellipsis
    as ``\ldots``; primes as ``^{\prime}``; trailing backslashes, spaces and a final period.
    """
    s = strip_delimiters(unicodedata.normalize("NFKC", answer).replace("\u2212", "-"))
    s = _PERCENT_WORD.sub(r"\\%", s)
    for _ in range(3):  # nested styles: \mathbf{\mathcal{B}}
        unstyled = _STYLE_CMD.sub(lambda m: m.group(1) or m.group(2), s)
        if unstyled == s:
            break
        s = unstyled
    for pattern, replacement in _LIGHT:
        s = pattern.sub(replacement, s)
    return _TRAILING.sub("", s).strip()


@lru_cache(maxsize=_CACHED)  # pure, and called several times per comparison
def clean_latex(answer: str) -> str:
    r"""Meaning-preserving clean-up of an answer, for comparing written forms and numbers.

    :func:`light_latex`, then ``{,}`` thousands markers as ",", ``\text{…}``-style wrappers
    (dropped when they hold a unit word), spacing commands, degrees, and ``\frac12`` →
    ``\frac{1}{2}``.
    """
    s = _TEXT_CMD.sub(_unwrap_text, light_latex(answer))
    for pattern, replacement in _CLEANUPS:
        s = pattern.sub(replacement, s)
    return _TRAILING.sub("", s).strip()


def split_percent(s: str) -> tuple[str, bool]:
    """A cleaned answer without its percent signs (``%``, ``\\%``), and whether it had one."""
    stripped = _PERCENT.sub(" ", s).strip()
    return stripped, stripped != s.strip()


@lru_cache(maxsize=_CACHED)  # pure, and called several times per comparison
def normalize_answer(answer: str) -> str:
    r"""Normalise an answer string for exact comparison.

    :func:`clean_latex`, then: percent signs, a leading ``x =`` / ``x \in``, a unit word after
    a number, thousands separators (``1,000`` and ``1 000``, never ``1, 000``: a comma followed
    by a space separates list items) and spaces, except one between two digits (``4 4/9`` is
    a mixed number, not ``44/9``).
    """
    s, _ = split_percent(clean_latex(answer))
    m = _ASSIGNMENT.match(s)
    if m and "=" not in m.group(1):
        s = m.group(1)
    m = _NUMBER_THEN_UNIT.match(s)
    if m:
        s = m.group(1)
    s = re.sub(r"\s+", " ", s).strip()
    if _SPACED_THOUSANDS.fullmatch(s) or _THOUSANDS.fullmatch(s):
        s = s.replace(" ", "").replace(",", "")
    s = re.sub(r"(?<!\d) | (?!\d)", "", s)
    return s.rstrip(".")


def is_plain(answer: str) -> bool:
    """Whether a normalised answer is plain words or digits ("odd", "Evelyn", "north-east"):
    something only string comparison can judge, and can judge exactly."""
    return bool(_PLAIN.fullmatch(answer))


# --------------------------------------------------------------------------- numbers

_MAX_NUMBER_CHARS = 200  # longer "numbers" go to math-verify, under its deadline
_INTEGER = re.compile(r"[-+]?\d+")
_DECIMAL = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+)")
_SLASH = re.compile(r"([-+]?\d+)/(\d+)")
_MIXED = re.compile(r"([-+]?)(\d+) (\d+)/(\d+)")
_FRAC = re.compile(r"([-+]?)\\frac\{([-+]?\d+)\}\{(\d+)\}")


def as_number(s: str) -> tuple[Fraction, bool] | None:
    """Parse a normalised plain number; return (value, exact), exact=False for decimals."""
    if len(s) > _MAX_NUMBER_CHARS:
        return None
    if _INTEGER.fullmatch(s):
        return Fraction(int(s)), True
    if _DECIMAL.fullmatch(s):
        return Fraction(s), False
    m = _SLASH.fullmatch(s)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2))), True
    m = _MIXED.fullmatch(s)
    if m and int(m.group(4)) != 0:
        value = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
        return (-value if m.group(1) == "-" else value), True
    m = _FRAC.fullmatch(s)
    if m and int(m.group(3)) != 0:
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return (-value if m.group(1) == "-" else value), True
    return None


def comma_decimal(s: str) -> str | None:
    """``1000,99`` → ``1000.99``: a number written with a decimal comma, or ``None``.

    Only when the comma cannot be a thousands separator (``1,234`` stays one thousand two
    hundred thirty-four) and no space follows it (``1, 234`` is a list of two numbers).
    """
    s = s.strip()
    if len(s) > _MAX_NUMBER_CHARS or not _COMMA_DECIMAL.fullmatch(s) or _THOUSANDS.fullmatch(s):
        return None
    return s.replace(",", ".")


# --------------------------------------------------------------------------- lists

_OPENERS = {"(": ")", "[": "]", r"\{": r"\}", r"\langle": r"\rangle", "{": "}"}
_CLOSERS = {")", "]", r"\}", r"\rangle", "}"}
_TOKEN = re.compile(r"\\\{|\\\}|\\langle(?![A-Za-z])|\\rangle(?![A-Za-z])|\\.|[()\[\]{},]")
_CONNECTIVE = re.compile(r"^(?:\\text\s*\{\s*(?:and|or)\s*\}|(?:and|or)\s)\s*", re.I)


@dataclass(frozen=True)
class Items:
    r"""A comma list: its brackets ("" when bare) and its parts.

    Attributes:
        open: "(", "[", ``\{``, ``\langle`` or "".
        close: ")", "]", ``\}``, ``\rangle`` or "" (an interval may mix: ``[0, 1)``).
        parts: the parts, stripped, at least two.
    """

    open: str
    close: str
    parts: tuple[str, ...]

    @property
    def is_set(self) -> bool:
        r"""Written as a set, ``\{…\}``: the one notation that says order does not matter."""
        return self.open == r"\{"

    @property
    def has_ellipsis(self) -> bool:
        r"""A sequence with an ellipsis (``1, 2, \ldots``): order always matters."""
        return ELLIPSIS in self.parts


def _top_level(s: str) -> tuple[list[str], int | None] | None:
    """Split ``s`` at its top-level commas; also the end of a group opened at index 0.

    ``None`` when the brackets do not balance.
    """
    parts, depth, last = [], 0, 0
    group_end: int | None = None
    for m in _TOKEN.finditer(s):
        token = m.group(0)
        if token in _OPENERS:
            depth += 1
        elif token in _CLOSERS:
            depth -= 1
            if depth < 0:
                return None
            if depth == 0 and group_end is None and _starts_with_opener(s):
                group_end = m.end()
        elif token == "," and depth == 0:
            parts.append(s[last : m.start()])
            last = m.end()
    if depth != 0:
        return None
    parts.append(s[last:])
    return parts, group_end


def _starts_with_opener(s: str) -> bool:
    return any(s.startswith(o) for o in _OPENERS)


def split_items(s: str) -> Items | None:
    r"""Read an answer (:func:`light_latex`) as a comma list, or ``None`` if it is not one.

    Plain grouping braces are dropped (``{1,3}`` is the list 1, 3; ``\{1,3\}`` is a set). A
    leading "and"/"or" on a part is dropped ("19, 46, and 82").
    """
    s = s.strip()
    while True:
        split = _top_level(s)
        if split is None:
            return None
        parts, group_end = split
        if len(parts) > 1 or group_end != len(s):
            break
        # the whole answer is one bracketed group: look inside it
        opener = next(o for o in sorted(_OPENERS, key=len, reverse=True) if s.startswith(o))
        closer = next(c for c in sorted(_CLOSERS, key=len, reverse=True) if s.endswith(c))
        inner = s[len(opener) : len(s) - len(closer)].strip()
        if opener == "{" and closer == "}":
            s = inner
            continue
        split = _top_level(inner)
        if split is None or len(split[0]) < 2:
            return None
        return Items(opener, closer, tuple(_CONNECTIVE.sub("", p.strip()) for p in split[0]))
    if len(parts) < 2:
        return None
    stripped = tuple(_CONNECTIVE.sub("", p.strip()) for p in parts)
    if not all(stripped):
        return None
    return Items("", "", stripped)
