"""The one contract every model follows: ``forward(batch) -> ModelOutput``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelOutput:
    """``loss``: the total to backpropagate; ``losses``: its named terms (logged separately);
    ``logits``: per classification head ``(B, C)``; ``scores``: selection scores ``(B, K)``."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    scores: torch.Tensor | None = None
