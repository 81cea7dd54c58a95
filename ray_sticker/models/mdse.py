"""MDSE: Modality-Dependent Sentiments Exploring (Li et al., ICASSP 2024), REFERENCE.md §1.

Follows the paper (equation numbers in the code comments):

- ViT patch tokens ``v`` (M) and RoBERTa word tokens ``z`` (N), both of width ``d``.
- Dual cross-modal interaction, Eq. 1: ``f_v^s = FF(CA(z, v, v))``, ``f_z^s = FF(CA(v, z, z))``
  (CA's arguments are query, key, value), and the shared feature ``f^s``, Eq. 2: the
  average of the concatenated tokens of both.
- Private feature learning, Eq. 3-5: the similarity ``S`` of the original tokens with the
  interacted ones, ``S̄ = softmax(row sums of S)`` over the tokens, ``v^p = (1 - S̄)·v``;
  the adaptation block, Eq. 6: ``f_v^p = avg(FF(SA(v^p)))``; ``f_v = FF([f^s, f_v^p])``,
  Eq. 7; the same for the text; ``f = FF([f_v, f_z])``, Eq. 8; an MLP classifier with
  cross-entropy, Eq. 9.
- MACL, Eq. 10-11: the 3B embeddings ``[f_v; f_z; f]`` contrasted by sentiment label on
  their cosines. The literal ``-log(Σ_same C / Σ_all C)`` is undefined once cosines are
  negative; implemented is its supervised-contrastive reading (Khosla et al., SupCon
  ``L_out``) with ``exp(C/τ)``, τ = 0.07 (the code's temperature): for each anchor ``i``,
  ``-1/|P(i)| Σ_{p∈P(i)} log(exp(C_ip/τ) / Σ_{a≠i} exp(C_ia/τ))``, ``P(i)`` the other
  embeddings with ``i``'s label, averaged over the anchors. [Alternative: the sum over
  positives inside the log, closer to Eq. 11's shape.] The datasets give one label per
  pair, so the image, text and multimodal embeddings of a pair share it; it is the first
  head's label. The self-pair is excluded, as in SupCon. ``macl_weight`` is 1: the paper
  gives no weight, the code's ``cl_self_loss_alpha`` defaults to 1. Not copied: the code's
  loss (a log-softmax of raw dot products over two views, gathered at label-indexed
  positions) does not implement Eq. 11.
- 8 attention heads (``fusion_heads``; the code uses 16), max text length 128, 224 px.

Follows the official code (royal-dargon/MDSE ``model.py``) where the paper is silent:

- Every CA / SA + FF pair is the code's ``CrossAttention`` block: one LayerNorm applied to
  query and key/value, multi-head attention, dropout, a residual around the *normalised*
  query, then LayerNorm, FF ``d -> d -> d`` (GELU, dropout) and a residual.
- The FFs of Eq. 7 and 8 are the code's ``Dropout, Linear(2d, d), GELU, Linear(d, d)``; the
  classifier is its ``Dropout, Linear(·, d/2), GELU, Linear(d/2, classes)``, here on ``f``
  (width d) as Eq. 8-9 say, where the code applies it to ``[f_v, f_z]`` and has no Eq. 8.
- ``shared_block``: the code passes the concatenated interacted tokens through one more
  block (its ``text_image_decoder``, self-attention) before the average of Eq. 2; the
  paper's equations do not show it. On in the shipped configs (see the count below), off
  gives Eq. 2 literally.

Chosen here:

- Shapes of Eq. 1 and 3. With query ``z``, ``f_v^s`` has N tokens (the image content each
  word gathers), so ``S = v (f_v^s)ᵀ`` is M×N, not M×M as printed, and ``S̄`` (length M)
  comes from summing each row over the N words; the code computes exactly this
  (``image_init @ image_guide_text^T``, summed over the last axis). Likewise ``S`` is N×M
  for the text. ``S`` is computed in fp32 and is not scaled, as in the paper and the code.
- Padding is masked everywhere (the code attends to padded words): in CA / SA keys, in the
  sums of ``S``, in the softmax of ``S̄`` over the words and in every average.
- ``z`` is every word token including ``<s>`` (the code drops the first token in Eq. 3-6
  only). ``v`` is open_clip's patch tokens: ``VisionTower`` returns ``x[:, 1:]`` after
  ``ln_post`` for class-token pooling, so the class token is excluded, like the paper's M
  patches (the code keeps it in the CA blocks).
- Text and image private features use separate adaptation blocks ("in the same way",
  §2.2); the code builds ``image_single_encoder`` but never calls it, passing the image
  tokens through the text block.
- The text tower's pooler is removed (never read, so every parameter gets a gradient).
- Vision: open_clip ``ViT-B-16`` with the ``openai`` (CLIP) weights, 224 px, 196 patch
  tokens of width 768. The paper's torchvision ImageNet ViT-B/16 cannot be loaded into
  open_clip's ``VisionTransformer`` (no ``ln_pre``, a biased patch embedding, other key
  names), and ``VisionTower`` needs open_clip's ``(pooled, tokens)`` interface. The code
  keeps the ViT frozen: set ``model.freeze_vision`` to match it.

Ablation switches (config booleans, Tables 3-5): ``use_ipfl`` / ``use_tpfl`` (off: no
private branch for that modality, ``f_v = FF(f^s)`` with an FF from width d), ``use_adaptation``
(off: "PFL w/o ada", ``f_v^p = avg(v^p)``, the adaptation blocks are not built), ``use_macl``
(off: CE only), ``macl_views`` (``"all"``: ``[f_v; f_z; f]``, ``"modal"``: ``[f_v; f_z]``),
``shared_block``; ``fusion_heads`` (8 paper, 16 code).

Parameter count. The paper's "MDSE introduces only 17.7M" is the code's ``FuseModel``
without its backbones: five blocks of 3,546,624 at d = 768 (MHA 4d² + 4d, FF 2(d² + d),
two LayerNorms 4d) = 17,733,120; the MLPs of Eq. 7-9 (``Classification`` in the code) are
outside it. One of the five, ``image_single_encoder``, is never called there. The paper's
equations alone give four blocks (two CA, two adaptation), 14,186,496 (-19.9%). This module
builds and calls five: the two CA blocks, two adaptation blocks (separate, as the paper
says) and the code's shared block, so ``param_breakdown()["fusion"]`` — the attention blocks, the part the paper
counts — is 17,733,120 for ``mdse.json`` (+0.19%). ``"heads"`` holds the Eq. 7-9 MLPs
(5,609,475 at d = 768 with one 3-class head), so ``fusion + heads`` is everything outside
the towers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ray_sticker.models.encoders import TextTower, VisionTower
from ray_sticker.models.layers import ImageNormalize, masked_mean, model_dtype
from ray_sticker.models.losses import cross_entropy
from ray_sticker.models.output import ModelOutput
from ray_sticker.models.registry import register

MACL_VIEWS = ("all", "modal")


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (``L_out``) on cosines: each row is an anchor whose
    positives are the other rows with its label; mean over anchors with a positive. Rows
    labelled -1 take no part; 0 (with a gradient path) when no anchor has a positive."""
    keep = labels >= 0
    e = F.normalize(embeddings[keep].float(), dim=-1)
    lab = labels[keep]
    n = e.shape[0]
    self_pair = torch.eye(n, dtype=torch.bool, device=e.device)
    logits = (e @ e.t() / temperature).masked_fill(self_pair, float("-inf"))  # C_ij / τ, Eq. 10
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    positive = (lab[:, None] == lab[None, :]) & ~self_pair
    n_pos = positive.sum(dim=1)
    anchors = n_pos > 0
    if not bool(anchors.any()):
        return embeddings.float().sum() * 0.0
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / n_pos.clamp_min(1)
    return per_anchor[anchors].mean()  # Eq. 11, SupCon reading


class AttentionBlock(nn.Module):
    """The official code's ``CrossAttention`` block: ``FF(CA(q, kv, kv))`` (Eq. 1), or
    ``FF(SA(x))`` when ``kv`` is ``q`` (Eq. 6). Pre-LN with one LayerNorm for query and
    key/value and the residual around the normalised query, as in the code."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.drop1 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(width)
        self.ff = nn.Sequential(
            nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, width), nn.Dropout(dropout)
        )

    def forward(self, query: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        """``query`` ``(B, Q, d)`` attends to ``context`` ``(B, K, d)``; ``context_mask``
        ``(B, K)`` (1 = real token) or None."""
        q = self.norm1(query)
        kv = self.norm1(context)
        padding = None if context_mask is None else context_mask == 0
        attn, _ = self.attn(q, kv, kv, key_padding_mask=padding, need_weights=False)
        x = q + self.drop1(attn)
        return x + self.ff(self.norm2(x))


def _mlp(in_width: int, hidden: int, out_width: int, dropout: float) -> nn.Sequential:
    """The code's heads: ``Dropout, Linear, GELU, Linear``."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_width, hidden), nn.GELU(), nn.Linear(hidden, out_width))


def _reversed_importance(tokens: torch.Tensor, interacted: torch.Tensor, token_mask: torch.Tensor | None,
                         interacted_mask: torch.Tensor | None) -> torch.Tensor:
    """``1 - S̄`` ``(B, T)``: ``S = tokens · interactedᵀ`` (Eq. 3), ``S̄`` the softmax over the
    tokens of each row's sum over the real interacted tokens (Eq. 4), in fp32."""
    s = tokens.float() @ interacted.float().transpose(1, 2)  # S (B, T, T'), Eq. 3
    if interacted_mask is not None:
        s = s.masked_fill(interacted_mask[:, None, :] == 0, 0.0)
    row_sums = s.sum(dim=-1)
    if token_mask is not None:
        row_sums = row_sums.masked_fill(token_mask == 0, float("-inf"))
    return 1.0 - row_sums.softmax(dim=-1)  # 1 - S̄, Eq. 4-5


class PrivateBranch(nn.Module):
    """Private feature learning of one modality (Eq. 3-6) -> ``f^p`` ``(B, d)``."""

    def __init__(self, width: int, heads: int, dropout: float, adaptation: bool):
        super().__init__()
        self.adaptation = AttentionBlock(width, heads, dropout) if adaptation else None

    def forward(self, tokens: torch.Tensor, interacted: torch.Tensor, token_mask: torch.Tensor | None,
                interacted_mask: torch.Tensor | None) -> torch.Tensor:
        weight = _reversed_importance(tokens, interacted, token_mask, interacted_mask)
        private = weight.unsqueeze(-1).to(tokens.dtype) * tokens  # v^p = (1 - S̄)·v, Eq. 5
        if self.adaptation is not None:
            private = self.adaptation(private, private, token_mask)  # FF(SA(v^p, v^p, v^p)), Eq. 6
        return masked_mean(private, token_mask)  # avg, Eq. 6


class MDSEFusion(nn.Module):
    """Everything of MDSE after the towers, at width ``d``: tokens in, ``f_v``, ``f_z``,
    ``f`` and logits out. Built alone (without towers) for parameter counts."""

    def __init__(self, cfg: dict[str, Any], width: int):
        super().__init__()
        heads = int(cfg.get("fusion_heads", 8))
        dropout = float(cfg.get("dropout", 0.1))
        mlp_dropout = float(cfg.get("mlp_dropout", 0.2))
        adaptation = bool(cfg.get("use_adaptation", True))
        self.image_interaction = AttentionBlock(width, heads, dropout)  # FF(CA(z, v, v)), Eq. 1
        self.text_interaction = AttentionBlock(width, heads, dropout)  # FF(CA(v, z, z)), Eq. 1
        self.shared = AttentionBlock(width, heads, dropout) if cfg.get("shared_block", True) else None
        self.image_private = PrivateBranch(width, heads, dropout, adaptation) if cfg.get("use_ipfl", True) else None
        self.text_private = PrivateBranch(width, heads, dropout, adaptation) if cfg.get("use_tpfl", True) else None
        image_in = width * (2 if self.image_private is not None else 1)
        text_in = width * (2 if self.text_private is not None else 1)
        self.image_fuse = _mlp(image_in, width, width, mlp_dropout)  # f_v = FF([f^s, f_v^p]), Eq. 7
        self.text_fuse = _mlp(text_in, width, width, mlp_dropout)  # f_z = FF([f^s, f_z^p]), Eq. 7
        self.fuse = _mlp(2 * width, width, width, mlp_dropout)  # f = FF([f_v, f_z]), Eq. 8
        self.classifiers = nn.ModuleDict(
            {name: _mlp(width, width // 2, int(n), mlp_dropout) for name, n in dict(cfg["heads"]).items()}
        )  # MLP(f), Eq. 9

    def blocks(self) -> list[nn.Module]:
        """The attention blocks: the part of the model the paper's 17.7M counts."""
        found = [self.image_interaction, self.text_interaction, self.shared]
        for branch in (self.image_private, self.text_private):
            if branch is not None:
                found.append(branch.adaptation)
        return [b for b in found if b is not None]

    def param_breakdown(self) -> dict[str, int]:
        """``fusion``: the attention blocks; ``heads``: the MLPs of Eq. 7-9."""
        fusion = sum(p.numel() for b in self.blocks() for p in b.parameters())
        return {"fusion": fusion, "heads": sum(p.numel() for p in self.parameters()) - fusion}

    def forward(self, v: torch.Tensor, z: torch.Tensor,
                z_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``v`` ``(B, M, d)`` patch tokens, ``z`` ``(B, N, d)`` word tokens, ``z_mask`` ``(B, N)``."""
        f_v_s = self.image_interaction(z, v, None)  # (B, N, d), Eq. 1
        f_z_s = self.text_interaction(v, z, z_mask)  # (B, M, d), Eq. 1
        shared = torch.cat([f_v_s, f_z_s], dim=1)  # [f_v^s, f_z^s]
        shared_mask = torch.cat([z_mask, z_mask.new_ones(v.shape[:2])], dim=1)
        if self.shared is not None:
            shared = self.shared(shared, shared, shared_mask)
        f_s = masked_mean(shared, shared_mask)  # f^s = avg([f_v^s, f_z^s]), Eq. 2

        image_in, text_in = [f_s], [f_s]
        if self.image_private is not None:
            image_in.append(self.image_private(v, f_v_s, None, z_mask))  # f_v^p, Eq. 3-6
        if self.text_private is not None:
            text_in.append(self.text_private(z, f_z_s, z_mask, None))  # f_z^p, Eq. 3-6
        f_v = self.image_fuse(torch.cat(image_in, dim=-1))  # Eq. 7
        f_z = self.text_fuse(torch.cat(text_in, dim=-1))  # Eq. 7
        f = self.fuse(torch.cat([f_v, f_z], dim=-1))  # Eq. 8
        logits = {name: head(f) for name, head in self.classifiers.items()}  # Eq. 9
        return f_v, f_z, f, logits


class MDSE(nn.Module):
    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.config = cfg
        self.heads_spec: dict[str, int] = dict(cfg["heads"])
        weights = cfg.get("loss_weights", {})
        self.loss_weights = {name: float(weights.get(name, 1.0)) for name in self.heads_spec}
        self.use_macl = bool(cfg.get("use_macl", True))
        self.macl_views = str(cfg.get("macl_views", "all"))
        if self.macl_views not in MACL_VIEWS:
            raise ValueError(f"mdse: macl_views must be one of {MACL_VIEWS}, got '{self.macl_views}'")
        self.macl_weight = float(cfg.get("macl_weight", 1.0))
        self.macl_temperature = float(cfg.get("macl_temperature", 0.07))
        self.macl_label = next(iter(self.heads_spec))

        self.text = TextTower(cfg["text"])
        if getattr(self.text.encoder, "pooler", None) is not None:
            self.text.encoder.pooler = None  # never read: z is the word tokens
        self.text.use_pooler = False
        self.vision = VisionTower(cfg["vision"])
        if self.text.width != self.vision.width:
            raise ValueError(f"mdse: text width {self.text.width} != vision width {self.vision.width} (d is shared)")
        self.normalize = ImageNormalize.for_tower(cfg["vision"])
        self.fusion = MDSEFusion(cfg, self.text.width)

    def param_breakdown(self) -> dict[str, int]:
        """Parameters of the towers, of the attention blocks (``fusion``, what the paper
        counts) and of the MLPs (``heads``); together they are every parameter."""
        return {
            "text": sum(p.numel() for p in self.text.parameters()),
            "vision": sum(p.numel() for p in self.vision.parameters()),
            **self.fusion.param_breakdown(),
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        z_mask = batch["attention_mask"]
        z, _ = self.text(batch["input_ids"], z_mask)  # word tokens z
        v, _ = self.vision(self.normalize(batch["pixel_values"], model_dtype(self.vision)))  # patch tokens v
        f_v, f_z, f, logits = self.fusion(v, z, z_mask)

        losses = {
            f"ce_{name}": cross_entropy(logits[name], batch[f"label_{name}"])  # L_SC, Eq. 9
            for name in self.heads_spec
            if f"label_{name}" in batch
        }
        loss = f.new_zeros((), dtype=torch.float32)
        for name, value in losses.items():
            loss = loss + self.loss_weights[name[3:]] * value
        label = batch.get(f"label_{self.macl_label}")
        if self.use_macl and label is not None:
            views = [f_v, f_z, f] if self.macl_views == "all" else [f_v, f_z]
            macl = supcon_loss(torch.cat(views), label.repeat(len(views)), self.macl_temperature)  # Eq. 10-11
            losses["macl"] = macl
            loss = loss + self.macl_weight * macl
        return ModelOutput(loss=loss, losses=losses, logits=logits)


@register("mdse")
def build_mdse(cfg: dict[str, Any]) -> MDSE:
    missing = [k for k in ("text", "vision") if not cfg.get(k)]
    if missing:
        raise ValueError(f"mdse needs towers {missing}")
    return MDSE(cfg)
