"""Int-RA: reply-with-sticker retrieval from the conversation's intention and the stickers'
attribute descriptions (Liang et al., "Reply with Sticker: New Dataset and Model for Sticker
Retrieval", StickerInt).

Two towers, scored by cosine (Eq. 13), so the whole sticker pool can be ranked:

query (knowledge-enhanced intention predictor, §4.1)
    ``H^T`` = pooled M-BERT output of the context ⊕ its COMET inferences (Eq. 1-3; the five
    relations arrive as columns, appended when ``use_knowledge``); intention distribution
    ``ρ = softmax(W H^T + b)`` (Eq. 4) trained with ``L_int`` = cross-entropy (Eq. 6);
    ``H^Y`` = M-BERT of the text of the predicted label ``argmax ρ`` (Eq. 5): the text
    ``intent_label.txt`` gives each intention (the manifest's ``extra.intent_texts``, passed
    as ``label_texts``), the label name where a dataset has no texts. The texts are
    tokenized once at build time and encoded by the same M-BERT on every call, so ``L_ret``
    trains the text tower through them too.
sticker (attribute-aware sticker representation, §4.2)
    ``H^A_j`` = pooled M-BERT output of the MLLM's description j ∈ {gesture, posture,
    facial expression, verbal} (Eq. 8; the descriptions are precomputed columns);
    ``H^I`` = the CLIP ViT's patch tokens and pooled token (Eq. 9); ``h^A_j = f_des(H^A_j)``,
    ``h^I = f_vis(H^I)`` (Eq. 10); ``M_j`` = h-head attention of ``h^A_j`` over the patch
    tokens (Eq. 11, no output projection, ``d_k = d/h``); ``ℳ = max_j M_j``; ``H^R = ℳ ⊙ h^I``
    (Eq. 12).
loss
    ``L = λ1·L_ret + λ2·L_int`` (``lambda_ret``, ``lambda_int``, both 1 in the paper).

Faithful readings (the paper is ambiguous; the alternatives are named):

- Fusing the intention. The paper calls ``H^Y`` the "intention-fused textual
  representation", but ``H^Y = M-BERT(ŷ)`` alone would give every query with the same
  predicted label the same vector, leaving the context unused for ranking. The official
  code concatenates the context and label-text features and applies a linear layer; this
  module does the same, ``q = f_txt([H^T; H^Y])`` with ``f_txt`` built in ``__init__`` (the
  official code builds a fresh, untrained ``nn.Linear`` on every call and its
  cross-attention likewise; not copied). ``f_txt`` also projects to the sticker side's ``d``.
- The predicted label. Eq. 5 takes the argmax, which is followed here: ``H^Y`` is the
  encoding of the argmax label's text, so the classifier learns from ``L_int`` only and the
  retrieval loss cannot pull the predicted intention away from the annotated one. The
  alternative, ``soft_intent: true``, uses the probability-weighted mixture ``ρ · H^Y_all``,
  which is differentiable in ``ρ`` and lets ``L_ret`` train the classifier as well.
- The relation score. The paper writes ``M_j, ℳ ∈ ℝ``, but a scalar ``ℳ`` scaling ``h^I``
  (Eq. 12) cannot change a cosine (Eq. 13) beyond its sign, and Eq. 11 as written returns
  a value vector (``softmax(·)(h^I W^V)``). So ``M_j ∈ ℝ^d`` is the attended patch feature
  of attribute j (its pooled description is the single query), ``ℳ`` the element-wise max
  over the four attributes, and ``H^R`` its element-wise product with the pooled
  visual vector ``f_vis(pooled H^I)``.
- ``L_ret`` (Eq. 14) is printed as ``Σ max(ρ_neg − (1 − ρ_pos) + margin)``; it is read as
  the hinge ``max(0, ρ_neg − ρ_pos + margin)`` summed over each query's negative
  candidates and averaged over the batch. ``margin`` (0.2), ``d`` and ``h`` are not given
  in the paper (the official code uses Chinese-CLIP's 512-d space).

Ablations (Table 2): ``use_attribute: false`` makes ``H^R = h^I`` (no descriptions, no
cross-attention); ``use_knowledge: false`` drops the COMET columns from the query text;
``use_intention: false`` makes the query ``f_txt(H^T)``: no intention classifier, no
``L_int``, no label text, and ``heads_spec`` is empty (a model without the predictor has
no intention accuracy to report; the config's ``heads`` still makes the pipeline keep only
rows with an intention label, so the ablation is evaluated on the same rows).

Backbones: the paper uses M-BERT (``bert-base-multilingual-cased``) for the context, the
label texts and the descriptions (one shared tower here, as in the paper) and a CLIP ViT;
its code used Chinese-CLIP's ViT-B/16, which open_clip does not ship, so the full config
takes open_clip's ``ViT-B-16`` with OpenAI weights.
"""

from __future__ import annotations

import itertools

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ray_sticker.models import encoders
from ray_sticker.models.encoders import TextTower, VisionTower
from ray_sticker.models.layers import ImageNormalize, model_dtype
from ray_sticker.models.losses import cross_entropy
from ray_sticker.models.output import ModelOutput
from ray_sticker.models.registry import register

INTENT = "intent"


def hinge_retrieval_loss(scores: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 14 read as a hinge: ``mean_b Σ_{k≠target_b} max(0, s_bk − s_b,target + margin)``
    over cosine scores ``(B, K)``, in fp32."""
    s = scores.float()
    pos = s.gather(1, target.view(-1, 1))
    violation = (s - pos + margin).clamp_min(0.0)
    negatives = torch.ones_like(violation, dtype=torch.bool).scatter(1, target.view(-1, 1), False)
    return (violation * negatives).sum(dim=1).mean()


class AttributeCrossAttention(nn.Module):
    """Eq. 11 and the max over attributes: ``M_j = softmax((h^A_j W_Q)(h^I W_K)ᵀ/√d_k)(h^I W_V)``
    with ``heads`` parallel heads of ``d_k = d / heads`` concatenated; returns ``ℳ = max_j M_j``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"int-ra: dim {dim} is not divisible by attention_heads {heads}")
        self.heads = heads
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)

    def forward(self, attributes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """``attributes`` ``(N, J, d)`` (one query per description), ``regions`` ``(N, T, d)``
        -> ``ℳ`` ``(N, d)``."""
        n, j, d = attributes.shape
        dk = d // self.heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (N, S, d) -> (N, heads, S, d_k)
            return x.view(n, -1, self.heads, dk).transpose(1, 2)

        q, k, v = split(self.w_q(attributes)), split(self.w_k(regions)), split(self.w_v(regions))
        attn = torch.softmax((q @ k.transpose(-1, -2)).float() / dk**0.5, dim=-1).to(v.dtype)
        m = (attn @ v).transpose(1, 2).reshape(n, j, d)  # M_j, Eq. 11
        return m.max(dim=1).values  # ℳ = max_j M_j


class IntRA(nn.Module):
    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.config = cfg
        self.use_intention = bool(cfg.get("use_intention", True))
        self.use_attribute = bool(cfg.get("use_attribute", True))
        self.use_knowledge = bool(cfg.get("use_knowledge", True))
        self.soft_intent = bool(cfg.get("soft_intent", False))
        self.margin = float(cfg.get("margin", 0.2))
        self.lambda_ret = float(cfg.get("lambda_ret", 1.0))
        self.lambda_int = float(cfg.get("lambda_int", 1.0))
        dim = int(cfg.get("dim", 512))

        self.text = TextTower(cfg["text"])
        self.vision = VisionTower(cfg["vision"])
        self.normalize = ImageNormalize.for_tower(cfg["vision"])
        self.f_vis = nn.Linear(self.vision.width, dim)  # Eq. 10
        if self.use_attribute:
            self.f_des = nn.Linear(self.text.width, dim)  # Eq. 10
            self.relation = AttributeCrossAttention(dim, int(cfg.get("attention_heads", 8)))

        self.heads_spec: dict[str, int] = {}
        self.has_label_text = False
        if self.use_intention:
            heads = dict(cfg.get("heads", {}))
            if set(heads) != {INTENT}:
                raise ValueError(f"int-ra: heads must be {{'{INTENT}': classes}}, got {heads}")
            self.heads_spec = heads
            self.classifier = nn.Linear(self.text.width, heads[INTENT])  # Eq. 4
            self.f_txt = nn.Linear(2 * self.text.width, dim)  # q = f_txt([H^T; H^Y])
            self._label_buffers(cfg, heads[INTENT])
        else:
            self.f_txt = nn.Linear(self.text.width, dim)  # q = f_txt(H^T)

    def _label_buffers(self, cfg: dict[str, Any], classes: int) -> None:
        """Tokenize the intent labels' texts once: ``label_texts`` (the dataset's, e.g.
        StickerInt's ``intent_label.txt``), else the label names; absent both, the model is
        buildable (parameter counts) but not runnable."""
        names = (cfg.get("label_texts") or {}).get(INTENT) or cfg.get("label_names", {}).get(INTENT)
        if names is None:
            return
        if len(names) != classes:
            raise ValueError(f"int-ra: {len(names)} intent label texts for {classes} classes: {names}")
        tokenizer = encoders.load_tokenizer(encoders.tokenizer_name(cfg["text"]))
        tok = tokenizer(list(names), padding=True, truncation=True,
                        max_length=int(cfg.get("label_max_length", 16)), return_tensors="pt")
        self.register_buffer("label_input_ids", tok["input_ids"], persistent=False)
        self.register_buffer("label_attention_mask", tok["attention_mask"], persistent=False)
        self.has_label_text = True

    # ------------------------------------------------------------------ query tower

    def _query(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The query vector ``(B, d)`` and the intent logits ``(B, N)`` (None without intention)."""
        h_t = self.text(batch["input_ids"], batch["attention_mask"])[1]  # H^T, Eq. 3
        if not self.use_intention:
            return self.f_txt(h_t), None
        if not self.has_label_text:
            raise ValueError(
                "int-ra needs the intent label names: put \"label_names\": {\"intent\": [...]} in the "
                "model config (the trainer adds them from the dataset manifest)"
            )
        logits = self.classifier(h_t)  # Eq. 4 (before the softmax)
        label_text = self.text(self.label_input_ids, self.label_attention_mask)[1]  # (N, Dt)
        if self.soft_intent:
            h_y = torch.softmax(logits.float(), dim=-1).to(label_text.dtype) @ label_text
        else:
            h_y = label_text[logits.argmax(dim=-1)]  # H^Y = M-BERT(argmax ρ), Eq. 5
        return self.f_txt(torch.cat([h_t, h_y], dim=-1)), logits

    def embed_queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit-norm query vectors ``(B, d)`` in fp32."""
        return F.normalize(self._query(batch)[0].float(), dim=-1)

    # ---------------------------------------------------------------- sticker tower

    def _sticker(self, pool: dict[str, torch.Tensor]) -> torch.Tensor:
        """``H^R`` ``(N, d)`` of stickers given as ``pixel_values`` ``(N, 3, H, W)`` and
        ``desc_input_ids`` / ``desc_attention_mask`` ``(N, J, L)``."""
        tokens, pooled = self.vision(self.normalize(pool["pixel_values"], model_dtype(self)))  # H^I, Eq. 9
        h_i = self.f_vis(pooled)  # Eq. 10
        if not self.use_attribute:
            return h_i
        ids = pool["desc_input_ids"]
        n, j, length = ids.shape
        h_a = self.text(ids.reshape(n * j, length), pool["desc_attention_mask"].reshape(n * j, length))[1]  # Eq. 8
        relation = self.relation(self.f_des(h_a).view(n, j, -1), self.f_vis(tokens))  # Eq. 10-11, ℳ
        return relation * h_i  # H^R = ℳ ⊙ h^I, Eq. 12

    def embed_stickers(self, pool: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit-norm sticker vectors ``(N, d)`` in fp32."""
        return F.normalize(self._sticker(pool).float(), dim=-1)

    def sticker_parameters(self):
        """What :meth:`embed_stickers` depends on (frozen: its pool embeddings are kept for the run)."""
        parts = [self.vision, self.f_vis] + ([self.text, self.f_des, self.relation] if self.use_attribute else [])
        return itertools.chain.from_iterable(m.parameters() for m in parts)

    # ---------------------------------------------------------------------- forward

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        query, logits = self._query(batch)
        pixels = batch["candidate_pixel_values"]
        b, k = pixels.shape[:2]
        pool = {"pixel_values": pixels.flatten(0, 1)}
        if self.use_attribute:
            pool["desc_input_ids"] = batch["candidate_desc_input_ids"].flatten(0, 1)
            pool["desc_attention_mask"] = batch["candidate_desc_attention_mask"].flatten(0, 1)
        stickers = F.normalize(self._sticker(pool).float(), dim=-1).view(b, k, -1)
        scores = torch.einsum("bd,bkd->bk", F.normalize(query.float(), dim=-1), stickers)  # CA, Eq. 13

        losses: dict[str, torch.Tensor] = {}
        weighted: list[torch.Tensor] = []
        if "target" in batch:
            losses["ret"] = hinge_retrieval_loss(scores, batch["target"], self.margin)  # Eq. 14
            weighted.append(self.lambda_ret * losses["ret"])
        out_logits: dict[str, torch.Tensor] = {}
        if logits is not None:
            out_logits[INTENT] = logits
            if f"label_{INTENT}" in batch:
                losses[f"ce_{INTENT}"] = cross_entropy(logits, batch[f"label_{INTENT}"])  # Eq. 6
                weighted.append(self.lambda_int * losses[f"ce_{INTENT}"])
        loss = torch.stack(weighted).sum() if weighted else scores.sum() * 0.0
        return ModelOutput(loss=loss, losses=losses, logits=out_logits, scores=scores)


@register("intra")
def build_intra(cfg: dict[str, Any]) -> IntRA:
    if not (cfg.get("text") and cfg.get("vision")):
        raise ValueError("intra needs both 'text' and 'vision' towers")
    return IntRA(cfg)
