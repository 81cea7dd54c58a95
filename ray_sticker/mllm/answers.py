"""Robust parsing of generated answers.

MLLMs answer in many shapes: ``sentiment: 1, intent: 7``, ``{"sentiment": 1, "intent": 7}``,
``Sentiment = 1; Intent = 7``, ``1, 7``, the label's name instead of its number
(``sentiment: positive``), or prose around any of these. A value that cannot be read, or is
outside the label map, is ``None``: the evaluation counts it as wrong and reports how many
answers could not be parsed.
"""

from __future__ import annotations

import re
from typing import Sequence

_NUMBER = re.compile(r"-?\d+")
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


def _in_range(value: int, n: int) -> int | None:
    return value if 0 <= value < n else None


def _named_value(head: str, text: str, names: Sequence[str]) -> int | None:
    """``<head> … <label name>`` on the same clause, the longest matching name first."""
    m = re.search(rf"\b{re.escape(head)}\b[\"']?\s*(?:[:=]|is|was|->)?\s*[\"']?([^,;\n}}]*)", text, re.IGNORECASE)
    if not m:
        return None
    clause = m.group(1).lower()
    for i in sorted(range(len(names)), key=lambda j: -len(names[j])):
        if re.search(rf"(?<!\w){re.escape(names[i].lower())}(?!\w)", clause):
            return i
    return None


def parse_labels(answer: str, heads: dict[str, int],
                 label_names: dict[str, Sequence[str]] | None = None) -> dict[str, int | None]:
    """Each head's class index from ``answer`` (None where unreadable or out of range).

    Tried in order per head: ``<head>: <number>`` (any of ``: = is``, quotes allowed, JSON
    included); ``<head>: <label name>``. Then, for the heads still unread, bare numbers: when
    the answer holds exactly one number per head, in the heads' order.
    """
    label_names = label_names or {}
    out: dict[str, int | None] = {}
    for head, n in heads.items():
        m = re.search(rf"\b{re.escape(head)}\b[\"']?\s*(?:[:=]|is|was|->)?\s*[\"']?\s*(-?\d+)", answer, re.IGNORECASE)
        if m:
            out[head] = _in_range(int(m.group(1)), n)
        elif label_names.get(head):
            out[head] = _named_value(head, answer, label_names[head])
        else:
            out[head] = None
    if all(v is None for v in out.values()) and not any(re.search(rf"\b{re.escape(h)}\b", answer, re.I) for h in heads):
        numbers = [int(x) for x in _NUMBER.findall(answer)]
        if len(numbers) == len(heads):
            out = {head: _in_range(v, n) for (head, n), v in zip(heads.items(), numbers)}
    return out


def parse_choice(answer: str, num_candidates: int) -> int | None:
    """The 0-based candidate an answer names (``"3"``, ``"Sticker 3."``, ``"the third one"``),
    or None when it names none, or one outside 1..num_candidates."""
    m = _NUMBER.search(answer)
    if m:
        value = int(m.group(0))
        return value - 1 if 1 <= value <= num_candidates else None
    words = re.findall(r"[a-z]+", answer.lower())
    for i, word in enumerate(_ORDINALS[:num_candidates]):
        if word in words:
            return i
    return None
