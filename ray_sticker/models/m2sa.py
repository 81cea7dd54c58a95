"""M2SA (Multimodal and Multilingual Model for Sentiment Analysis of Tweets) and the
text-only and image-only baselines.

Follows the paper / official code (REFERENCE.md §1): the text encoder's pooler output
(768) concatenated with the image encoder's pooler output (768) goes through one linear
layer to the 3 sentiment classes, trained with cross-entropy; nothing is frozen. The
unimodal baselines are the same head on one tower's pooled vector.

Choice: the image tower is an open_clip vision transformer with its projection removed,
so its pooled output is the pre-projection pooled token like Hugging Face's CLIP
``pooler_output``. A dropout before the head is configurable (``dropout``, default 0 = paper).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ray_sticker.models.encoders import TextTower, VisionTower
from ray_sticker.models.layers import ImageNormalize
from ray_sticker.models.output import ModelOutput
from ray_sticker.models.registry import register

class PooledFusionClassifier(nn.Module):
    """concat(pooled text, pooled image) -> Linear -> classes, one head per label (Eq. in §4.3 of M2SA)."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.config = cfg
        self.heads_spec: dict[str, int] = dict(cfg["heads"])
        self.loss_weights = {k: float(cfg.get("loss_weights", {}).get(k, 1.0)) for k in self.heads_spec}
        self.text = TextTower(cfg["text"]) if cfg.get("text") else None
        self.vision = VisionTower(cfg["vision"]) if cfg.get("vision") else None
        if self.text is None and self.vision is None:
            raise ValueError("model needs a text tower, a vision tower or both")
        self.normalize = ImageNormalize.for_tower(cfg.get("vision"))
        width = (self.text.width if self.text else 0) + (self.vision.width if self.vision else 0)
        self.dropout = nn.Dropout(float(cfg.get("dropout", 0.0)))
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in self.heads_spec.items()})

    @property
    def uses_text(self) -> bool:
        return self.text is not None

    @property
    def uses_image(self) -> bool:
        return self.vision is not None

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.text is not None:
            parts.append(self.text(batch["input_ids"], batch["attention_mask"])[1])
        if self.vision is not None:
            dtype = next(self.heads.parameters()).dtype
            parts.append(self.vision(self.normalize(batch["pixel_values"], dtype))[1])
        return torch.cat(parts, dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        h = self.dropout(self.features(batch))
        logits = {name: head(h) for name, head in self.heads.items()}
        losses = {}
        for name, lg in logits.items():
            target = batch.get(f"label_{name}")
            if target is not None:
                losses[f"ce_{name}"] = F.cross_entropy(lg.float(), target)
        if losses:
            loss = sum(self.loss_weights[k[3:]] * v for k, v in losses.items())
        else:
            loss = torch.zeros((), device=h.device)
        return ModelOutput(loss=loss, losses=losses, logits=logits)


@register("m2sa")
def build_m2sa(cfg: dict[str, Any]) -> PooledFusionClassifier:
    if not (cfg.get("text") and cfg.get("vision")):
        raise ValueError("m2sa needs both 'text' and 'vision' towers")
    return PooledFusionClassifier(cfg)


@register("text-only")
def build_text_only(cfg: dict[str, Any]) -> PooledFusionClassifier:
    if not cfg.get("text"):
        raise ValueError("text-only needs a 'text' tower")
    return PooledFusionClassifier({**cfg, "vision": None})


@register("image-only")
def build_image_only(cfg: dict[str, Any]) -> PooledFusionClassifier:
    if not cfg.get("vision"):
        raise ValueError("image-only needs a 'vision' tower")
    return PooledFusionClassifier({**cfg, "text": None})
