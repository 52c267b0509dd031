r"""Finding the answer in a text: the last ``\boxed{}`` of a response, or what a text states.

Two readings, for two kinds of input:

* :func:`extract_boxed` — a model *response* under the boxed-answer contract: only its last
  ``\boxed{}`` counts.
* :func:`stated_answer` — a text that *is* an answer: a dataset's gold answer, or an answer
  graded with ``extract=False``. Every box counts (several boxes are a multi-part answer),
  else the math in ``$…$``, ``$$…$$``, ``\(…\)`` or ``\[…\]`` delimiters, else the text.
  A text that is prose around its math (:func:`is_prose`: "so the answer is $5$.") is read by
  math-verify's own extraction instead, which knows the phrasings of a final answer.
"""

from __future__ import annotations

import re

__all__ = ["all_boxed", "extract_boxed", "is_prose", "stated_answer", "strip_delimiters"]

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_DELIMITED = [("$$", "$$"), ("$", "$"), (r"\(", r"\)"), (r"\[", r"\]")]
# Display math may span lines; inline math may not (a "$" on one line and another further down
# are more likely two prices than one formula). An escaped "\$" is a dollar sign, not a delimiter.
_SEGMENT = re.compile(
    r"\$\$(?P<d1>.+?)\$\$"
    r"|\\\[(?P<d2>.+?)\\\]"
    r"|\\\((?P<i1>[^\n]+?)\\\)"
    r"|(?<!\\)\$(?P<i2>(?:\\\$|[^$\n])+?)(?<!\\)\$",
    re.S,
)
# Text around boxes and math segments that only joins them into one list ("$1$ and $2$",
# "$21,16$ or $11$") or marks a percentage: they are the parts of one answer.
_CONNECTIVES = re.compile(
    r"(?:[\s,;.:]|\band\b|\bor\b|\\q?quad\b|\\text\s*\{\s*(?:and|or)?\s*\}|\\?%|\bpercent\b|\bpct\b)*",
    re.I,
)
_PERCENT_AFTER = re.compile(r"\s*(?:\\?%|percent\b|pct\b)", re.I)
# Words of prose, outside LaTeX commands and \text{} arguments.
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_TEXT_ARG = re.compile(r"\\(?:text\w*|mbox|mathrm|operatorname)\s*\{[^{}]*\}")
_PROSE_WORDS = 3


def _box_argument(text: str, start: int) -> tuple[str | None, int]:
    """The argument of a box command ending at ``start``: (content or None, end index)."""
    n = len(text)
    i = start
    while i < n and text[i].isspace():
        i += 1
    if i < n and text[i] == "{":
        depth = 0
        k = i
        while k < n:
            c = text[k]
            if c == "\\":
                k += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : k].strip() or None, k + 1
            k += 1
        return None, n
    if i == start:  # "\boxed5" or "\boxed" at the end: no argument
        return None, i
    m = re.match(r"[^\s$]+", text[i:])
    return (m.group(0), i + m.end()) if m else (None, i)


def extract_boxed(text: str) -> str | None:
    r"""Return the content of the last ``\boxed{…}`` (or ``\fbox{…}``, or ``\boxed 5``) in text.

    Braces nest and escaped braces (``\{``, ``\}``) are literal. Only the last box counts: if it
    is empty or never closed (a truncated response) the result is ``None``, not an earlier box.
    """
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    return _box_argument(text, matches[-1].end())[0]


def all_boxed(text: str) -> list[str]:
    """The contents of every complete, non-empty box in ``text``, in order."""
    contents = []
    for m in _BOX.finditer(text):
        content, _ = _box_argument(text, m.end())
        if content is not None:
            contents.append(content)
    return contents


def strip_delimiters(s: str) -> str:
    r"""Drop one pair of enclosing math delimiters: ``$…$``, ``$$…$$``, ``\(…\)``, ``\[…\]``."""
    s = s.strip()
    for left, right in _DELIMITED:
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : len(s) - len(right)].strip()
    return s


def _spans(text: str) -> list[tuple[int, int, str]]:
    """The boxes and math segments of a text, in order: (start, end, content)."""
    spans: list[tuple[int, int, str]] = []
    for m in _BOX.finditer(text):
        content, end = _box_argument(text, m.end())
        if content is not None:
            spans.append((m.start(), end, content))
    for m in _SEGMENT.finditer(text):
        inner = next(g for g in m.groups() if g is not None).strip()
        inside = [s for s in spans if m.start() <= s[0] and s[1] <= m.end()]
        overlaps = any(s[0] < m.end() and m.start() < s[1] for s in spans)
        if not inside and not overlaps:
            spans.append((m.start(), m.end(), inner))
        elif inside and any(s[0] < m.start() or m.end() < s[1] for s in spans if s not in inside):
            return []  # boxes cut across segments: not a text to read piecewise
    return sorted(spans)


def _gaps(text: str, spans: list[tuple[int, int, str]]) -> list[str]:
    ends = [0] + [end for _, end, _ in spans]
    starts = [start for start, _, _ in spans] + [len(text)]
    return [text[a:b] for a, b in zip(ends, starts, strict=True)]


def _delimiter_only(gap: str) -> str:
    # A box inside a math segment leaves the segment's delimiters in the gaps around it.
    return re.sub(r"\$\$|\$|\\[()\[\]]", " ", gap)


def is_prose(text: str) -> bool:
    """Whether an answer text is prose around its math rather than the math itself.

    With boxes or math delimiters: when the text around them does more than join them into a
    list ("$1$ and $2$" is a list, "so the answer is $5$" is prose). Without: when it has
    three or more words.
    """
    text = text.strip()
    spans = _spans(text)
    if spans:
        return not all(_CONNECTIVES.fullmatch(_delimiter_only(g)) for g in _gaps(text, spans))
    if _BOX.search(text) or _SEGMENT.search(text):
        return True
    return len(_WORD.findall(_TEXT_ARG.sub(" ", text))) >= _PROSE_WORDS


def stated_answer(text: str) -> str:
    r"""The answer a text states, for a text that is an answer (not a whole response).

    The contents of its boxes and math segments, joined with ", " when there are several
    (a percent sign after one stays with it); else the text without enclosing delimiters.
    Prose (:func:`is_prose`) is returned as it is, for math-verify's answer extraction.
    """
    text = text.strip()
    if is_prose(text):
        return text
    spans = _spans(text)
    if not spans:
        return strip_delimiters(text)
    gaps = _gaps(text, spans)
    parts = []
    for i, (_, _, content) in enumerate(spans):
        percent = _PERCENT_AFTER.match(_delimiter_only(gaps[i + 1]))
        parts.append(content + (r"\%" if percent and "%" not in content else ""))
    return ", ".join(p for p in parts if p)
