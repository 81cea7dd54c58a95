"""EIGML: Emotion and Intention Guided Multi-Modal Learning for sticker response selection
(Hu et al., AAAI 2026; REFERENCE.md §1).

A dialogue (``input_ids``) and the COMET relations xIntent, xNeed, xWant, xEffect
(``knowledge_input_ids`` ``(B, R, L)``, one text per relation) go through one BERT; the
``K`` candidate stickers (``candidate_pixel_values`` ``(B, K, 3, H, W)``) through one ViT
as ``B·K`` images. The dialogue is encoded once per example and broadcast over its ``K``
candidates in the fusion (never re-encoded). ``scores`` ``(B, K)`` is ``p_final``. With
``text.use_pooler: false`` the BERT pooler is removed (the paper counts BERT without it).

Follows the paper:

- inter-modality alignment (Eq. 2-7): I2T and T2I InfoNCE on the 256-d projections of the
  [CLS] features with a learnable temperature (init 0.07, PBR); ``L_emo = KL(E_v^pos || E_t)``
  with ``E_t = E_emo[argmax e_t]`` and ``E_v = f_emo(F_v^cls)`` (softmax on both sides);
  ``L_int`` the sum of the same two InfoNCE directions between ``I_v = f_int(F_v^cls)`` and ``I'_t``;
- intra-modality alignment (Eq. 8-10): two dropout views per modality, symmetric KL of their
  emotion and intention predictions and a two-view InfoNCE on normalised projections;
- EIKS (Eq. 11-13): the text emotion classifier ``f'_emo`` (``L'_emo``, cross-entropy) scores
  every relation's [CLS]; the relation with the highest emotion loss is dropped; a gate
  mixes the knowledge with its enhanced version ``I_ke = I_t + δ``;
- IEGA (Eq. 14-16): ``V_EIV = softmax(Q_EI K_V^T/√d) V_V``, ``E_fuse = softmax(Q_T Q_EI^T/√d)
  V_EIV``, ``Z = f_fuse(LN(F_t + SD(E_fuse)))`` (multi-head, stochastic depth per candidate);
- SAMM (Eq. 17-19): ``s = (1 + cos)/2`` for emotion and intention, ``s_EI = α s_emo +
  (1 - α) s_int``, ``p_final = β p_vl + (1 - β) s_EI``;
- total (Eq. 20): ``L_itm + L_inter + L_intra + w'_e L'_emo`` with ``L_itm`` the BCE of
  ``p_final`` against the one-hot positive over all ``B·K`` pairs (Eq. 1).

The image tower is ALBEF's ViT-B/16 as an open_clip ``vision_cfg`` (no ``ln_pre``, LayerNorm
eps 1e-6); :func:`albef_vision_weights` converts ALBEF's checkpoint to it exactly.

Follows PBR's code (the base the paper builds on; EIGML's code was not available):
T2I (Eq. 3) contrasts a dialogue with its own ``K`` candidates (positive and distractors),
I2T (Eq. 2) a positive sticker with the batch's dialogues; the temperature is clamped to
[0.001, 0.5] as in ALBEF; the images' keys/values are all ViT tokens ([CLS] and patches).

Choices where the paper is silent (alternatives in brackets):

- ``I_t^r`` is the [CLS] of relation ``r`` encoded alone (so EIKS can drop one); the
  intention embedding ``I'_t`` is the mean over the kept relations [encoding the
  concatenation ``C_t`` once more]. ``I_v = f_int(F_v^cls)`` lives in the text width so it
  compares with ``I'_t`` directly.
- ``e_t`` is the dialogue's cnsenti label ``label_emotion``; a row without one (-1) skips
  ``L_emo`` and ``L'_emo``, and its ``E_t`` is the softmax of ``f'_emo(F_t^cls)`` times
  ``E_emo`` (its Eq. 11 target is that softmax) [a literal argmax of an all-zero count
  would always pick the first emotion]. ``L'_emo`` uses the label, not cnsenti's distribution.
- ``E_emo`` (Eq. 4) is a learnable ``C x C`` table (``C`` = 7) whose rows start as the log of
  label-smoothed one-hot distributions (``emotion_smoothing`` 0.1: ``softmax(E_t)`` puts 0.914
  on the dialogue's emotion) [an identity start peaks at 0.31, a target close to uniform];
  IEGA lifts ``E_t`` to the text width with a linear layer and SAMM compares it with ``E_v``.
  Eq. 5 is read in the paper's order, ``KL(softmax(E_v^pos) || softmax(E_t))``, with
  ``E_t``'s gradient stopped: the dialogue's emotion is the target the image emotion head
  ``f_emo`` learns to predict [without the stop, both sides can drift towards uniform].
- EIKS: ``δ = MLP(mean of the kept relations)`` (REFERENCE's faithful reading of the
  "nonlinear regression" [a gradient step of ``L'_emo`` on the knowledge]); ``δ`` is added to
  every relation, and the dropped relation is masked out of ``I'_t`` and of IEGA.
- IEGA: ``E_IT`` is the ``R`` refined relation vectors plus the lifted ``E_t`` as ``R + 1``
  tokens; ``p_vl = sigmoid(Linear(masked mean of Z over the dialogue's tokens))`` [ALBEF's
  [CLS] position only]. ``Q_T Q_EI^T`` does not depend on the candidate, so it is computed
  once per dialogue. Without IEGA (``use_iega: false``) the fallback is the same block with
  plain cross-attention, ``softmax(Q_T K_V^T/√d) V_V``: the paper's "Base" semantic fusion,
  so the ablation removes exactly the emotion-intention guidance.
- Intra views (Eq. 8-10, "independent dropout and separate projection heads", after SimCSE):
  the dialogue's second view is a second pass through the text encoder under its own dropout
  (BERT's); the ViT has none, so an image's two views are two dropouts (``intra_dropout``) of
  its pooled features [a second ViT pass would give the same features twice]; images: all
  ``B·K`` candidates. Each view goes through its own projection head (width to width), then the
  emotion heads ``f_emo`` (images) and ``f'_emo`` (text) and the intention head ``f_int``, shared
  by both modalities (so the two towers must have the same width, as in the paper); the
  two-view InfoNCE is on the projected views with ``intra_temperature`` (0.1, PBR's SimCLR
  temperature). The four heads add 2.36 M parameters at full size (200.19 M in all, the paper
  counts 196.64 M) [256-d heads for the contrastive features only, the emotion and intention
  heads on the unprojected views: 0.79 M].
- ``α`` and ``β`` are sigmoids of learnable scalars (init 0.5) so ``p_final`` stays a
  probability for the BCE.
- Without EIKS (``use_eiks: false``) all relations are kept and ``I'_t = I_t``; ``L'_emo``
  stays (Eq. 20 lists it on its own). ``use_inter: false`` removes ``L_emo`` and ``L_int``
  but keeps the semantic I2T/T2I (the paper's ablation); Table 4 also drops SAMM in that
  row: set ``use_samm: false`` with it. Modules no enabled part uses are not built.

Loss weights: ``w_e``, ``w_i`` (inter) also give the intra (``w_e_text``, ``w_e_vision``,
``w_i_text``, ``w_i_vision``) and ``w_e_prime`` weights when those are null, so Figure 5's
sweep is one field each; all are 0.5 in the paper. Figure 5 reads a weight of 0 as "the
corresponding module is removed", and so does this model when every weight of a group is 0:
without the emotion, no ``f_emo``, ``f'_emo``, ``E_emo``, EIKS (its selection is emotion-guided:
all relations are kept), IEGA emotion token, and SAMM's ``s_EI = s_int``; without the intention,
no ``f_int``, no encoding of the COMET relations (the dataset still provides them), no EIKS,
IEGA guided by ``E_t`` alone, and ``s_EI = s_emo``; without both, IEGA is the plain
cross-attention and ``p_final = p_vl``. A loss term of weight 0 is not computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ray_sticker.models.encoders import TextTower, VisionTower
from ray_sticker.models.layers import ImageNormalize, masked_mean, model_dtype
from ray_sticker.models.losses import cross_entropy, info_nce, kl_div, symmetric_info_nce, symmetric_kl
from ray_sticker.models.output import ModelOutput
from ray_sticker.models.registry import register

SWITCHES = ("use_inter", "use_intra", "use_eiks", "use_iega", "use_samm")
KNOWLEDGE = "knowledge"
# The loss terms weighted by w_e (w_e, w_e^t, w_e^v, w'_e) and by w_i (w_i, w_i^t, w_i^v).
EMOTION_TERMS = ("emo", "intra_emo_text", "intra_emo_vision", "text_emo")
INTENTION_TERMS = ("int", "intra_int_text", "intra_int_vision")


# ---------------------------------------------------------------------------- loss terms


def candidate_info_nce(query: torch.Tensor, candidates: torch.Tensor, target: torch.Tensor,
                       temperature: float | torch.Tensor) -> torch.Tensor:
    """Eq. 3: row i of ``query`` ``(B, D)`` must pick candidate ``target[i]`` among its own
    ``candidates`` ``(B, K, D)``: ``-mean_i log softmax_k(cos(q_i, c_ik) / t)[target_i]``."""
    q = F.normalize(query.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    logits = torch.einsum("bd,bkd->bk", q, c) / temperature
    return F.cross_entropy(logits, target)


def matching_bce(p_final: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 1: binary cross-entropy of every (dialogue, candidate) probability ``(B, K)``
    against 1 for the positive and 0 for the distractors, mean over the ``B·K`` pairs."""
    labels = F.one_hot(target, p_final.shape[1]).float()
    return F.binary_cross_entropy(p_final.float().clamp(eps, 1.0 - eps), labels)


def _zero(like: torch.Tensor) -> torch.Tensor:
    """0 with a gradient path (a term with no labelled row)."""
    return like.float().sum() * 0.0


# ---------------------------------------------------------------------------- modules


class KnowledgeSelection(nn.Module):
    """EIKS after the relation scoring (Eq. 11-13): drop the relation whose emotion loss is
    highest, ``δ = MLP(mean of the kept relations)``, ``I_ke = I_t + δ``,
    ``w_k = σ(f_gate([I_t; I_ke]))``, ``I'_t = w_k ⊙ I_ke + (1 - w_k) ⊙ I_t``."""

    def __init__(self, width: int):
        super().__init__()
        self.delta = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.gate = nn.Linear(2 * width, width)

    def forward(self, knowledge: torch.Tensor, relation_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``knowledge`` ``(B, R, D)``, ``relation_loss`` ``(B, R)`` -> (``I'_t`` per relation
        ``(B, R, D)``, kept relations ``(B, R)`` bool)."""
        drop = relation_loss.argmax(dim=-1)  # Eq. 11
        keep = torch.ones_like(relation_loss, dtype=torch.bool)
        keep[torch.arange(keep.shape[0], device=keep.device), drop] = False
        delta = self.delta(masked_mean(knowledge, keep))
        enhanced = knowledge + delta.unsqueeze(1)  # I_ke = I_t + δ
        w = torch.sigmoid(self.gate(torch.cat([knowledge, enhanced], dim=-1)))  # Eq. 12
        return w * enhanced + (1.0 - w) * knowledge, keep  # Eq. 13


class GuidedFusion(nn.Module):
    """IEGA (Eq. 14-16) over a dialogue and its ``K`` candidates, guided by the intention
    (``knowledge``, ``R`` tokens) and the emotion (``E_t``, one token) where each is on; with
    neither, the same block with plain text-to-image cross-attention."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, drop_path: float, intention: bool,
                 emotion: bool, num_emotions: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"eigml: fusion_heads={heads} must divide the width {width}")
        self.heads, self.drop_path = heads, drop_path
        self.intention, self.emotion = intention, emotion
        self.guided = intention or emotion
        self.q_text = nn.Linear(width, width)
        self.k_image = nn.Linear(width, width)
        self.v_image = nn.Linear(width, width)
        if self.guided:
            self.q_guide = nn.Linear(width, width)
        if emotion:
            self.emotion_in = nn.Linear(num_emotions, width)
        self.norm = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))  # f_fuse

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N, D) -> (..., H, N, D/H)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(-3, -2)

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor,
                knowledge: torch.Tensor | None = None, knowledge_mask: torch.Tensor | None = None,
                text_emotion: torch.Tensor | None = None) -> torch.Tensor:
        """``text_tokens`` ``(B, L, D)``, ``image_tokens`` ``(B, K, T, D)``, ``knowledge``
        ``(B, R, D)`` with ``knowledge_mask`` ``(B, R)``, ``text_emotion`` ``(B, C)`` ->
        pooled ``Z_fuse`` ``(B, K, D)``."""
        q_t = self._split(self.q_text(text_tokens))  # (B, H, L, d)
        k_v = self._split(self.k_image(image_tokens))  # (B, K, H, T, d)
        v_v = self._split(self.v_image(image_tokens))
        scale = 1.0 / math.sqrt(q_t.shape[-1])
        if self.guided:
            guide, guide_mask = self._guide(knowledge, knowledge_mask, text_emotion)  # E_IT
            q_ei = self._split(self.q_guide(guide))  # (B, H, G, d)
            attn = torch.softmax((q_ei.unsqueeze(1) @ k_v.transpose(-1, -2)).float() * scale, dim=-1)
            v_eiv = attn.to(v_v.dtype) @ v_v  # Eq. 14: (B, K, H, G, d)
            scores = (q_t @ q_ei.transpose(-1, -2)).float() * scale  # (B, H, L, G), shared by the K candidates
            scores = scores.masked_fill(~guide_mask[:, None, None, :], float("-inf"))
            fused = torch.softmax(scores, dim=-1).to(v_eiv.dtype).unsqueeze(1) @ v_eiv  # Eq. 15
        else:
            attn = torch.softmax((q_t.unsqueeze(1) @ k_v.transpose(-1, -2)).float() * scale, dim=-1)
            fused = attn.to(v_v.dtype) @ v_v  # (B, K, H, L, d)
        fused = fused.transpose(-3, -2).flatten(-2)  # (B, K, L, D)
        z = self.mlp(self.norm(text_tokens.unsqueeze(1) + self._stochastic_depth(fused)))  # Eq. 16
        mask = text_mask.unsqueeze(1).expand(-1, z.shape[1], -1)
        return masked_mean(z.flatten(0, 1), mask.flatten(0, 1)).unflatten(0, z.shape[:2])

    def _guide(self, knowledge: torch.Tensor | None, knowledge_mask: torch.Tensor | None,
               text_emotion: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The guiding tokens ``(B, G, D)`` and their mask: the relations, then ``E_t`` lifted."""
        tokens, masks = [], []
        if self.intention:
            tokens.append(knowledge)
            masks.append(knowledge_mask)
        if self.emotion:
            lifted = self.emotion_in(text_emotion).unsqueeze(1)
            tokens.append(lifted)
            masks.append(torch.ones(lifted.shape[:2], dtype=torch.bool, device=lifted.device))
        return torch.cat(tokens, dim=1), torch.cat(masks, dim=1)

    def _stochastic_depth(self, x: torch.Tensor) -> torch.Tensor:
        """Drop the fused branch of whole (dialogue, candidate) pairs with rate ``drop_path``."""
        if not self.training or self.drop_path == 0.0:
            return x
        keep = torch.empty(x.shape[:2] + (1, 1), device=x.device, dtype=x.dtype).bernoulli_(1.0 - self.drop_path)
        return x * keep / (1.0 - self.drop_path)


class SimilarityAdjustedMatching(nn.Module):
    """SAMM (Eq. 17-19) with ``α = σ(a)``, ``β = σ(b)`` learnable (init 0.5). With the emotion
    or the intention removed (its loss weights 0), ``s_EI`` is the other similarity alone."""

    def __init__(self, emotion: bool = True, intention: bool = True):
        super().__init__()
        if not (emotion or intention):
            raise ValueError("SAMM needs the emotion or the intention similarity")
        self.emotion, self.intention = emotion, intention
        # Shape (1,): DeepSpeed cannot broadcast 0-dim parameters.
        if emotion and intention:
            self.alpha_logit = nn.Parameter(torch.zeros(1))
        self.beta_logit = nn.Parameter(torch.zeros(1))

    def forward(self, p_vl: torch.Tensor, text_emotion: torch.Tensor | None, image_emotion: torch.Tensor | None,
                text_intention: torch.Tensor | None, image_intention: torch.Tensor | None) -> torch.Tensor:
        """``p_vl`` ``(B, K)``; text ``(B, D)`` against images ``(B, K, D)`` -> ``p_final`` ``(B, K)``."""
        def similarity(text: torch.Tensor, images: torch.Tensor) -> torch.Tensor:  # Eq. 17
            return 0.5 * (1.0 + F.cosine_similarity(text.float().unsqueeze(1), images.float(), dim=-1))

        if self.emotion and self.intention:
            alpha = torch.sigmoid(self.alpha_logit.float()[0])
            s_ei = alpha * similarity(text_emotion, image_emotion) + (1.0 - alpha) * similarity(
                text_intention, image_intention)  # Eq. 18
        elif self.emotion:
            s_ei = similarity(text_emotion, image_emotion)
        else:
            s_ei = similarity(text_intention, image_intention)
        beta = torch.sigmoid(self.beta_logit.float()[0])
        return beta * p_vl.float() + (1.0 - beta) * s_ei  # Eq. 19


@dataclass
class EIGMLState:
    """The intermediate tensors of one forward pass (what the loss terms are computed from).
    Shapes: ``B`` dialogues, ``K`` candidates, ``R`` relations, ``D`` width, ``P`` projection
    width, ``C`` emotions."""

    target: torch.Tensor  # (B,)
    emotion: torch.Tensor  # (B,) cnsenti label, -1 if none
    text_embed: torch.Tensor  # (B, P)  F_t^cls W_t
    image_embed: torch.Tensor  # (B, K, P)  F_v^cls W_v
    text_emotion_logits: torch.Tensor | None = None  # (B, C)  f'_emo(F_t^cls); None without emotion
    image_emotion: torch.Tensor | None = None  # (B, K, C)  E_v
    image_intention: torch.Tensor | None = None  # (B, K, D)  I_v
    text_emotion: torch.Tensor | None = None  # (B, C)  E_t
    relations: torch.Tensor | None = None  # (B, R, D)  I_t^r
    relation_loss: torch.Tensor | None = None  # (B, R)  Eq. 11 per relation
    kept: torch.Tensor | None = None  # (B, R) bool
    refined: torch.Tensor | None = None  # (B, R, D)  I'_t per relation
    intention: torch.Tensor | None = None  # (B, D)  I'_t
    text_views: torch.Tensor | None = None  # (2, B, D)
    image_views: torch.Tensor | None = None  # (2, B·K, D)
    p_vl: torch.Tensor | None = None  # (B, K)
    p_final: torch.Tensor | None = None  # (B, K)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class EIGML(nn.Module):
    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.config = cfg
        if cfg.get("task") != "select":
            raise ValueError("eigml is a selection model: set \"task\": \"select\"")
        self.heads_spec: dict[str, int] = dict(cfg.get("heads", {}))
        for switch in SWITCHES:
            setattr(self, switch, bool(cfg.get(switch, True)))
        self.num_emotions = int(cfg["aux_labels"]["emotion"])
        self.weights = _loss_weights(cfg)
        self.intra_temperature = float(cfg.get("intra_temperature", 0.1))

        self.text = TextTower(cfg["text"])
        if not self.text.use_pooler:  # the paper's BERT has no pooler: do not keep unused weights
            self.text.encoder.pooler = None
        self.vision = VisionTower(cfg["vision"])
        width = self.text.width
        if self.vision.width != width:
            raise ValueError(f"eigml: text width {width} and vision width {self.vision.width} must match "
                             "(the intention head is shared by both modalities)")
        self.normalize = ImageNormalize.for_tower(cfg["vision"])
        embed_dim = int(cfg.get("embed_dim", 256))
        self.text_proj = nn.Linear(width, embed_dim)  # W_t
        self.vision_proj = nn.Linear(width, embed_dim)  # W_v
        self.temp = nn.Parameter(torch.tensor([float(cfg.get("temperature", 0.07))]))  # (1,): see SAMM

        # What the enabled parts need (Table 4 ablations build only what they use). Figure 5
        # reads a weight of 0 as the module removed: with every emotion weight 0 nothing of the
        # emotion is built (its heads, E_emo, EIKS, its IEGA token and SAMM similarity), with
        # every intention weight 0 nothing of the intention (f_int, the COMET relations, EIKS).
        self.emotion = any(self.weights[t] > 0 for t in EMOTION_TERMS)
        self.intention = any(self.weights[t] > 0 for t in INTENTION_TERMS)
        uses_heads = self.use_inter or self.use_intra or self.use_samm
        uses_knowledge = self.use_inter or self.use_iega or self.use_samm
        self.uses_emotion_embed = self.emotion and uses_knowledge
        self.uses_relations = self.intention and uses_knowledge
        if self.emotion:
            self.text_emotion_head = nn.Linear(width, self.num_emotions)  # f'_emo
        if self.emotion and uses_heads:
            self.vision_emotion_head = nn.Linear(width, self.num_emotions)  # f_emo
        if self.intention and uses_heads:
            self.intention_head = nn.Linear(width, width)  # f_int
        if self.uses_emotion_embed:
            self.emotion_embed = nn.Embedding(self.num_emotions, self.num_emotions)  # E_emo
            smoothing = float(cfg.get("emotion_smoothing", 0.1))
            if not 0.0 < smoothing < 1.0:
                raise ValueError(f"eigml: emotion_smoothing must be in (0, 1), got {smoothing}")
            with torch.no_grad():  # rows: log of label-smoothed one-hot distributions
                eye = torch.eye(self.num_emotions)
                self.emotion_embed.weight.copy_(torch.log((1.0 - smoothing) * eye + smoothing / self.num_emotions))
        self.selects_knowledge = self.use_eiks and self.uses_relations and self.emotion  # emotion-guided
        if self.selects_knowledge:
            self.eiks = KnowledgeSelection(width)
        self.fusion = GuidedFusion(width, int(cfg.get("fusion_heads", 12)), float(cfg.get("fusion_mlp_ratio", 4.0)),
                                   float(cfg.get("drop_path", 0.1)), self.use_iega and self.intention,
                                   self.use_iega and self.emotion, self.num_emotions)
        self.itm_head = nn.Linear(width, 1)
        if self.use_samm and (self.emotion or self.intention):
            self.samm = SimilarityAdjustedMatching(self.emotion, self.intention)
        self.view_dropout = nn.Dropout(float(cfg.get("intra_dropout", 0.1)))
        if self.use_intra:  # Eq. 8-10: a projection head per view and modality
            self.view_heads = nn.ModuleDict({m: nn.ModuleList([nn.Linear(width, width), nn.Linear(width, width)])
                                             for m in ("text", "vision")})

    # ------------------------------------------------------------------------ forward

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        state = self.run(batch)
        loss = self.total_loss(state.losses)
        return ModelOutput(loss=loss, losses=state.losses, scores=state.p_final)

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 20 (with Eq. 7 and 10): every term times its weight (1 for I2T, T2I, L_con, L_itm)."""
        return sum(self.weights.get(name, 1.0) * value for name, value in losses.items())

    def run(self, batch: dict[str, torch.Tensor]) -> EIGMLState:
        """Encode, fuse and score; returns every intermediate and the named loss terms."""
        dtype = model_dtype(self)
        target, emotion = batch["target"], batch["label_emotion"]
        text_tokens, text_cls = self.text(batch["input_ids"], batch["attention_mask"])  # F_t
        pixels = batch["candidate_pixel_values"]
        b, k = pixels.shape[:2]
        image_patches, image_pooled = self.vision(self.normalize(pixels.flatten(0, 1), dtype))
        image_tokens = torch.cat([image_pooled.unsqueeze(1), image_patches], dim=1).unflatten(0, (b, k))  # F_v
        image_cls = image_pooled.unflatten(0, (b, k))
        rows = torch.arange(b, device=target.device)

        s = EIGMLState(target=target, emotion=emotion, text_embed=self.text_proj(text_cls),
                       image_embed=self.vision_proj(image_cls))
        temp = self.temp.float()[0].clamp(0.001, 0.5)
        s.losses["i2t"] = info_nce(s.image_embed[rows, target], s.text_embed, temp)  # Eq. 2
        s.losses["t2i"] = candidate_info_nce(s.text_embed, s.image_embed, target, temp)  # Eq. 3
        labelled = emotion >= 0
        if self.emotion:
            s.text_emotion_logits = self.text_emotion_head(text_cls)
        if self._weighted("text_emo"):
            s.losses["text_emo"] = cross_entropy(s.text_emotion_logits, emotion)  # L'_emo
        if hasattr(self, "vision_emotion_head"):
            s.image_emotion = self.vision_emotion_head(image_cls)  # E_v, Eq. 4
        if hasattr(self, "intention_head"):
            s.image_intention = self.intention_head(image_cls)  # I_v
        if self.uses_emotion_embed:
            s.text_emotion = self._text_emotion(s)
        if self.uses_relations:
            self._knowledge(batch, s)
        if self.use_inter and self._weighted("emo"):
            pos_emotion = s.image_emotion[rows, target]
            wanted = s.text_emotion.detach()  # the dialogue's emotion is the target: only f_emo moves
            s.losses["emo"] = (kl_div(pos_emotion[labelled], wanted[labelled]) if bool(labelled.any())
                               else _zero(pos_emotion))  # Eq. 5
        if self.use_inter and self._weighted("int"):
            s.losses["int"] = (info_nce(s.image_intention[rows, target], s.intention, temp)
                               + candidate_info_nce(s.intention, s.image_intention, target, temp))
        if self.use_intra:
            # SimCSE: the dialogue through the text encoder a second time, under its own dropout;
            # the ViT has no dropout, so its views are two dropouts of its pooled features.
            second = self.text(batch["input_ids"], batch["attention_mask"])[1]
            s.text_views = torch.stack([text_cls, second])
            image_flat = image_cls.flatten(0, 1)
            s.image_views = torch.stack([self.view_dropout(image_flat), self.view_dropout(image_flat)])
            self._intra("text", s.text_views, getattr(self, "text_emotion_head", None), s.losses)
            self._intra("vision", s.image_views, getattr(self, "vision_emotion_head", None), s.losses)

        z = self.fusion(text_tokens, batch["attention_mask"], image_tokens, s.refined, s.kept, s.text_emotion)
        s.p_vl = torch.sigmoid(self.itm_head(z).float().squeeze(-1))
        s.p_final = (self.samm(s.p_vl, s.text_emotion, s.image_emotion, s.intention, s.image_intention)
                     if hasattr(self, "samm") else s.p_vl)
        s.losses["itm"] = matching_bce(s.p_final, target)  # Eq. 1
        return s

    def _weighted(self, term: str) -> bool:
        """Whether a weighted loss term counts (a term of weight 0 is not computed)."""
        return self.weights[term] > 0

    def _text_emotion(self, s: EIGMLState) -> torch.Tensor:
        """E_t (Eq. 4): ``E_emo`` of the dialogue's emotion, or of its predicted distribution."""
        table = self.emotion_embed(torch.arange(self.num_emotions, device=s.emotion.device))  # E_emo
        predicted = torch.softmax(s.text_emotion_logits.float(), dim=-1)
        return torch.where((s.emotion >= 0).unsqueeze(-1), table[s.emotion.clamp(min=0)],
                           predicted.to(table.dtype) @ table)

    def _knowledge(self, batch: dict[str, torch.Tensor], s: EIGMLState) -> None:
        """I_t^r per relation and, with EIKS, I'_t (Eq. 11-13)."""
        ids, mask = batch[f"{KNOWLEDGE}_input_ids"], batch[f"{KNOWLEDGE}_attention_mask"]
        b, r = ids.shape[:2]
        s.relations = self.text(ids.flatten(0, 1), mask.flatten(0, 1))[1].unflatten(0, (b, r))  # I_t^r[0]
        if self.selects_knowledge:
            if r < 2:
                raise ValueError(f"eigml: EIKS drops one knowledge relation and needs at least 2, got {r}")
            predicted = torch.softmax(s.text_emotion_logits.float(), dim=-1)
            e_t = torch.where((s.emotion >= 0).unsqueeze(-1),
                              F.one_hot(s.emotion.clamp(min=0), self.num_emotions).float(), predicted.detach())
            with torch.no_grad():
                log_p = F.log_softmax(self.text_emotion_head(s.relations).float(), dim=-1)
                s.relation_loss = -(e_t.unsqueeze(1) * log_p).sum(-1)  # L'_emo(f'_emo(I_t^r[0]), e_t)
            s.refined, s.kept = self.eiks(s.relations, s.relation_loss)
        else:
            s.refined, s.kept = s.relations, torch.ones(b, r, dtype=torch.bool, device=ids.device)
        s.intention = masked_mean(s.refined, s.kept)  # I'_t

    def _intra(self, modality: str, views: torch.Tensor, emotion_head: nn.Module | None,
               losses: dict[str, torch.Tensor]) -> None:
        """Eq. 8-9 for one modality's two views ``(2, N, D)``, each through its own projection
        head, then the shared emotion and intention heads (where that module is on)."""
        first, second = self.view_heads[modality]
        projected = torch.stack([first(views[0]), second(views[1])])
        if self._weighted(f"intra_emo_{modality}"):
            emo = emotion_head(projected)
            losses[f"intra_emo_{modality}"] = symmetric_kl(emo[0], emo[1])  # Eq. 8, * = emo
        if self._weighted(f"intra_int_{modality}"):
            inten = self.intention_head(projected)
            losses[f"intra_int_{modality}"] = symmetric_kl(inten[0], inten[1])  # Eq. 8, * = int
        losses[f"intra_con_{modality}"] = symmetric_info_nce(projected[0], projected[1],
                                                             self.intra_temperature)  # Eq. 9


def _loss_weights(cfg: dict[str, Any]) -> dict[str, float]:
    """Weights of the named loss terms; per-modality and ``w_e_prime`` default to ``w_e`` / ``w_i``."""
    w_e, w_i = float(cfg.get("w_e", 0.5)), float(cfg.get("w_i", 0.5))

    def pick(key: str, default: float) -> float:
        value = cfg.get(key)
        return default if value is None else float(value)

    return {
        "emo": w_e, "int": w_i,
        "intra_emo_text": pick("w_e_text", w_e), "intra_emo_vision": pick("w_e_vision", w_e),
        "intra_int_text": pick("w_i_text", w_i), "intra_int_vision": pick("w_i_vision", w_i),
        "text_emo": pick("w_e_prime", w_e),
    }


def albef_vision_weights(checkpoint: dict[str, Any], image_size: int,
                         prefix: str = "visual_encoder.") -> dict[str, torch.Tensor]:
    """ALBEF's ViT-B/16 (timm parameter names under ``prefix`` in ``ALBEF.pth``'s ``"model"``)
    as a state dict of the open_clip tower in ``eigml.json``; ``torch.save`` it and give the
    file as ``vision.pretrained``. Exact: open_clip's patch convolution has no bias, so
    ALBEF's is folded into the patch positions; positions are resized bicubically to
    ``image_size`` as ALBEF's ``interpolate_pos_embed`` does (256 px pre-training -> 128)."""
    state = checkpoint.get("model", checkpoint)
    vit = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not vit:
        raise ValueError(f"no '{prefix}*' weights in the checkpoint")
    patch = vit["patch_embed.proj.weight"]
    pos = vit["pos_embed"].reshape(-1, patch.shape[0])
    old, new = math.isqrt(pos.shape[0] - 1), image_size // patch.shape[-1]
    grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    if old != new:
        grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False).to(pos.dtype)
    patches = grid.permute(0, 2, 3, 1).reshape(new * new, -1) + vit["patch_embed.proj.bias"]
    out = {"conv1.weight": patch, "class_embedding": vit["cls_token"].reshape(-1),
           "positional_embedding": torch.cat([pos[:1], patches]),
           "ln_post.weight": vit["norm.weight"], "ln_post.bias": vit["norm.bias"]}
    names = {"norm1.": "ln_1.", "attn.qkv.": "attn.in_proj_", "attn.proj.": "attn.out_proj.", "norm2.": "ln_2.",
             "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}
    for key, value in vit.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            source = next(name for name in names if rest.startswith(name))
            out[f"transformer.resblocks.{index}.{names[source]}{rest[len(source):]}"] = value
    return out


@register("eigml")
def build_eigml(cfg: dict[str, Any]) -> EIGML:
    if not (cfg.get("text") and cfg.get("vision")):
        raise ValueError("eigml needs both 'text' and 'vision' towers")
    if "emotion" not in cfg.get("aux_labels", {}):
        raise ValueError("eigml needs \"aux_labels\": {\"emotion\": 7} (the dialogue's cnsenti emotion)")
    return EIGML(cfg)
