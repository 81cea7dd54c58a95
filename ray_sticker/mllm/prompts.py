"""Prompts and target answers of the MLLM baselines.

Classification follows the MSAIRS paper's MLLM evaluation: the model sees the sticker and
the context and is asked for each label as a number, with the numbering spelled out
("sentiment (0, 1, 2 = neutral, positive, negative) and intent (0..19)"). Selection shows
the K candidate stickers as numbered images and asks for the number of the best reply.
Fine-tuning teaches exactly the answer format that :mod:`ray_sticker.mllm.answers` parses.
"""

from __future__ import annotations

from typing import Sequence


def _numbered(names: Sequence[str]) -> str:
    return ", ".join(f"{i} = {n}" for i, n in enumerate(names))


def classify_prompt(context: str, sticker_text: str, heads: dict[str, int],
                    label_names: dict[str, list[str]]) -> str:
    """The MSAIRS-style question for one message (context + the attached sticker image)."""
    lines = [f"Conversation context: {context.strip() or '(none)'}"]
    if sticker_text.strip():
        lines.append(f"Text on the sticker: {sticker_text.strip()}")
    lines.append("The image is the sticker sent with the last message. Judge the message as a whole.")
    for head, n in heads.items():
        names = label_names.get(head) or [str(i) for i in range(n)]
        lines.append(f"{head} ({_numbered(names)})")
    fmt = ", ".join(f"{head}: <number>" for head in heads)
    lines.append(f"Answer with numbers only, in the form \"{fmt}\".")
    return "\n".join(lines)


def classify_answer(labels: dict[str, int]) -> str:
    """The target answer, e.g. ``"sentiment: 1, intent: 7"``."""
    return ", ".join(f"{head}: {value}" for head, value in labels.items())


def select_prompt(context: str, num_candidates: int) -> str:
    """The question for choosing a reply sticker among ``num_candidates`` numbered images."""
    return (f"Conversation context: {context.strip() or '(none)'}\n"
            f"The {num_candidates} images are candidate reply stickers, numbered 1 to {num_candidates} "
            f"in order. Which sticker is the best reply to the last message? Answer with its number only.")


def select_answer(position: int) -> str:
    """The target answer for the positive at 0-based ``position``: its 1-based number."""
    return str(position + 1)
