"""MMSAIR: joint sentiment analysis and intent recognition of a chat context with a sticker
(the MSAIRS paper, REFERENCE.md §1).

The paper text gives the architecture in words, without numbered equations, so the code
comments name the paper's symbols and sections instead.

Follows the paper (the model section; §4.3 for the fusion, §5.4 for joint vs separate training):

- two text encoders: the context gives ``E_X``, the sticker's OCR text gives ``E_S``;
- the sticker image goes through CLIP and a Conv1d to the text width, giving ``E_I``;
- ``E_IS = concat(E_I, E_S)``; ``O = MHA(q=E_X, k=v=E_IS)``;
- a differential vector ``V_diff`` "with learnable parameters" contrasting the context and
  the refined sticker features, a final multi-head attention, a concatenation and two
  classifiers trained with the weighted joint loss ``w_s·CE_sent + w_i·CE_int``.

Follows the official code: two separate ``hfl/chinese-roberta-wwm-ext`` encoders (context 50
tokens, sticker text 10, missing OCR text -> "图中没有文本", set in the config's
``text_inputs``); one image token from CLIP ViT-B/32 through ``Conv1d(k=1)``; 12 attention
heads; dropout 0.1 on the sticker-text tokens and on each attention output. Not copied from
it: the code has no differential vector and backpropagates the intent loss only.

Chosen here (the faithful reading of REFERENCE.md, alternatives in brackets):

- ``pool`` is the mean over real tokens, for ``E_X`` and ``O`` alike, so the two sides of the
  difference are pooled the same way [the [CLS] / pooler vector of the context]. The
  towers' BERT poolers are then unused and are removed.
- ``V_diff = W1·pool(E_X) − W2·pool(O)`` with bias-free ``W1``, ``W2`` [an MLP on the pair].
- The final attention is self-attention over ``[O; V_diff]`` [query ``O``, key/value
  ``E_IS`` as in the code]; the classifiers read ``concat[pool(E_X), pool(F), V_diff]``,
  ``F`` the final attention's output over the real positions.
- Attention honours padding masks (the code attends to padding).
- The image token is the CLIP tower's pooled output before CLIP's projection (768-d for
  ViT-B/32) [the projected 512-d ``encode_image`` of the code; the Conv1d is learned either
  way].

Ablation switches (config fields):

- ``use_diff_vector`` (default true): false drops ``V_diff`` (and ``W1``, ``W2``); the final
  attention then runs over ``O`` alone and the classifiers read ``[pool(E_X), pool(F)]``.
- ``tasks`` (default: every head): the heads trained. Single-task training (the paper's
  "separate" setting) builds and trains only that classifier; ``heads_spec`` still equals
  the config's ``heads`` so every head is evaluated, and a head outside ``tasks`` returns
  zero logits (a uniform prediction, argmax class 0), i.e. a constant baseline. The
  separate-training result of the paper is read from one run per task, each on its own
  trained head.
- ResNet-50 instead of CLIP (the paper's third ablation): a vision spec naming an open_clip
  ResNet (``"open_clip_model": "RN50"``, or a ``vision_cfg`` whose ``layers`` is a list of
  stage depths) gives the attention-pooled ResNet feature, which goes through the same
  Conv1d to one image token.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ray_sticker.models.encoders import TextTower, VisionTower
from ray_sticker.models.layers import ImageNormalize, masked_mean, model_dtype
from ray_sticker.models.losses import cross_entropy
from ray_sticker.models.output import ModelOutput
from ray_sticker.models.registry import register


def _drop_pooler(tower: TextTower) -> None:
    """Remove a Hugging Face pooler this model never reads (no parameters without gradient)."""
    if getattr(tower.encoder, "pooler", None) is not None:
        tower.encoder.pooler = None
    tower.use_pooler = False


def _key_padding(mask: torch.Tensor) -> torch.Tensor:
    """Attention mask (1 = real token) -> ``key_padding_mask`` (True = ignore)."""
    return mask == 0


class MMSAIR(nn.Module):
    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.config = cfg
        self.heads_spec: dict[str, int] = dict(cfg["heads"])
        self.tasks: list[str] = list(cfg.get("tasks") or self.heads_spec)
        unknown = [t for t in self.tasks if t not in self.heads_spec]
        if unknown:
            raise ValueError(f"mmsair: tasks {unknown} are not heads {sorted(self.heads_spec)}")
        weights = cfg.get("loss_weights", {})
        self.loss_weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}
        self.use_diff_vector = bool(cfg.get("use_diff_vector", True))

        self.text = TextTower(cfg["text"])  # context encoder -> E_X
        self.sticker_text = TextTower(cfg["sticker_text"])  # sticker OCR text encoder -> E_S
        for tower in (self.text, self.sticker_text):
            _drop_pooler(tower)
        self.vision = VisionTower(cfg["vision"])
        width = self.text.width
        if self.sticker_text.width != width:
            raise ValueError(f"mmsair: sticker_text width {self.sticker_text.width} != text width {width}")

        self.normalize = ImageNormalize.for_tower(cfg["vision"])
        self.image_proj = nn.Conv1d(self.vision.width, width, kernel_size=1)  # CLIP -> Conv1d -> E_I
        heads = int(cfg.get("attention_heads", 12))
        self.sticker_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.final_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        if self.use_diff_vector:
            self.diff_context = nn.Linear(width, width, bias=False)  # W1
            self.diff_sticker = nn.Linear(width, width, bias=False)  # W2
        self.dropout = nn.Dropout(float(cfg.get("dropout", 0.1)))
        fused = width * (3 if self.use_diff_vector else 2)
        self.classifiers = nn.ModuleDict({t: nn.Linear(fused, self.heads_spec[t]) for t in self.tasks})

    def param_breakdown(self) -> dict[str, int]:
        """Parameters per part: the three towers and the fusion layers with the classifiers."""
        towers = {name: getattr(self, name) for name in ("text", "sticker_text", "vision")}
        counts = {name: sum(p.numel() for p in tower.parameters()) for name, tower in towers.items()}
        counts["fusion"] = sum(p.numel() for p in self.parameters()) - sum(counts.values())
        return counts

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The concatenated representation ``(B, 3D)`` (``(B, 2D)`` without ``V_diff``)."""
        context_mask = batch["attention_mask"]
        sticker_mask = batch["sticker_text_attention_mask"]
        e_x, _ = self.text(batch["input_ids"], context_mask)  # E_X (B, Lx, D)
        e_s, _ = self.sticker_text(batch["sticker_text_input_ids"], sticker_mask)  # E_S (B, Ls, D)
        e_s = self.dropout(e_s)
        _, image = self.vision(self.normalize(batch["pixel_values"], model_dtype(self)))
        e_i = self.image_proj(image.unsqueeze(-1)).transpose(1, 2)  # E_I (B, 1, D)

        e_is = torch.cat([e_i, e_s], dim=1)  # E_IS = concat(E_I, E_S), §4.3
        e_is_mask = torch.cat([sticker_mask.new_ones(sticker_mask.shape[0], 1), sticker_mask], dim=1)
        o, _ = self.sticker_attention(e_x, e_is, e_is, key_padding_mask=_key_padding(e_is_mask), need_weights=False)
        o = self.dropout(o)  # O = MHA(E_X, E_IS, E_IS), §4.3

        pooled_x = masked_mean(e_x, context_mask)
        z, z_mask = o, context_mask
        if self.use_diff_vector:
            v_diff = self.diff_context(pooled_x) - self.diff_sticker(masked_mean(o, context_mask))  # V_diff, §4.3
            z = torch.cat([o, v_diff.unsqueeze(1)], dim=1)
            z_mask = torch.cat([context_mask, context_mask.new_ones(context_mask.shape[0], 1)], dim=1)
        f, _ = self.final_attention(z, z, z, key_padding_mask=_key_padding(z_mask), need_weights=False)
        f = self.dropout(f)  # the final multi-head attention, §4.3

        parts = [pooled_x, masked_mean(f, z_mask)]
        if self.use_diff_vector:
            parts.append(v_diff)
        return torch.cat(parts, dim=-1)  # feature concatenation, §4.3

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        h = self.features(batch)
        logits = {}
        for name, classes in self.heads_spec.items():
            if name in self.classifiers:
                logits[name] = self.classifiers[name](h)
            else:  # a head outside `tasks`: untrained, uniform prediction
                logits[name] = h.new_zeros(h.shape[0], classes)
        losses = {
            f"ce_{t}": cross_entropy(logits[t], batch[f"label_{t}"]) for t in self.tasks if f"label_{t}" in batch
        }
        if losses:  # joint loss L = w_s·CE_sent + w_i·CE_int
            loss = sum(self.loss_weights[name[3:]] * value for name, value in losses.items())
        else:
            loss = torch.zeros((), device=h.device)
        return ModelOutput(loss=loss, losses=losses, logits=logits)


@register("mmsair")
def build_mmsair(cfg: dict[str, Any]) -> MMSAIR:
    missing = [k for k in ("text", "sticker_text", "vision") if not cfg.get(k)]
    if missing:
        raise ValueError(f"mmsair needs towers {missing}")
    return MMSAIR(cfg)
