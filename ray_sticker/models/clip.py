"""CLIP baseline: a dual encoder scored by cosine, zero-shot or fine-tuned, for both tasks.

Follows CLIP (Radford et al., 2021) and Hugging Face's ``CLIPModel`` (hub
``openai/clip-vit-base-patch32``): image and text encoders, each followed by its linear
projection into the joint space, and a learned log-scale ``logit_scale`` (init
``log(1/0.07)``). The whole dual encoder, both projections and the scale included, comes
from one checkpoint, so the zero-shot path uses nothing randomly initialised.

Selection (``task: "select"``), as the Int-RA and EIGML papers' CLIP baseline:
``score(q, k) = s · cos(t_q, v_k)`` for the context embedding ``t_q`` and each candidate
sticker image ``v_k``; loss = cross-entropy over the K candidates. With
``in_batch_negatives`` the symmetric InfoNCE between each context and its positive sticker
over the batch (CLIP's training loss, the one the Int-RA code fine-tunes with) is added.
Choice: duplicate positives within a batch stay negatives of each other, as in CLIP; the
alternative is to mask them by pool index. Reported CLIP figures: Int-RA (StickerInt) P@1
5.12, mAP 12.89; EIGML MAP 70.9 (StickerChat), 54.9 (DSTC10-MOD).

Classification (``task: "classify"``), zero-shot and fine-tuned with the same head: each
class is the prompt ``prompt.format(label=name)`` over the dataset's ``label_names``,
tokenized once at build time and re-encoded by the text encoder at every step (so
fine-tuning moves the class embeddings too); ``logits = s · cos(f, c_j)``.
Choice for the fused query ``f`` (config ``fusion``): ``"image"`` is CLIP's own zero-shot
image classification, ``"text"`` classifies the context alone (the vision encoder is then
not built), ``"mean"`` (default) is ``normalize(normalize(v) + normalize(t))``, a point of the
joint space that scores each class by the sum of the two cosines up to a per-row factor;
the alternative, averaging the two modalities' logits, differs only by that factor.

Choices where CLIP's code and Hugging Face differ or say nothing:

- The text embedding is the final-layer-norm state at the *last* end-of-text token inside
  the attention mask. Hugging Face pools at the first one; the two agree for one text, but
  the pipeline joins dialogue turns with the tokenizer's separator, which for the offline
  WordPiece tokenizer is the end-of-text token (``[SEP]``) itself. ``eos_token_id`` comes
  from ``hf_config.text_config`` (the hub config of the OpenAI checkpoints still carries the
  legacy value 2); without one in a sequence, the last attended token is used.
- ``s = exp(logit_scale)`` is clamped at 100 in the forward, CLIP's bound (§2.5), which
  open_clip's training code enforces by clipping the parameter after each step instead.

Config::

    {"arch": "clip", "task": "classify" | "select",
     "clip": {"hf_model_name": ..., "pretrained": bool, "tokenizer": ...,
              "hf_config": {"model_type": "clip", "projection_dim": ...,
                            "text_config": {...}, "vision_config": {...}}},
     "image_size": int, "heads": {...}, "prompt": "a {label} post" | {head: template},
     "fusion": "mean", "in_batch_negatives": bool, "loss_weights": {head: w}}
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ray_sticker.models import losses
from ray_sticker.data.text import load_tokenizer, tokenizer_name, weights_location
from ray_sticker.models.layers import ImageNormalize, model_dtype
from ray_sticker.models.output import ModelOutput
from ray_sticker.models.registry import register

FUSIONS = ("image", "text", "mean")
MAX_LOGIT_SCALE = 100.0


def eos_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """``(B,)`` index of the last end-of-text token among the attended tokens of each row, or of
    the last attended token where a row has none."""
    position = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
    attended = attention_mask.bool()
    is_eos = attended & (input_ids == eos_token_id)
    last_eos = torch.where(is_eos, position, -1).amax(dim=-1)
    last_attended = torch.where(attended, position, 0).amax(dim=-1)
    return torch.where(last_eos >= 0, last_eos, last_attended)


class ClipTextEncoder(nn.Module):
    """CLIP's text transformer and text projection: token ids -> joint-space embedding."""

    tower_kind = "text"

    def __init__(self, model: nn.Module, projection: nn.Linear, eos_token_id: int):
        super().__init__()
        self.model = model
        self.projection = projection
        self.eos_token_id = eos_token_id
        self.max_length = int(model.config.max_position_embeddings)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return self.projection(hidden[rows, eos_positions(input_ids, attention_mask, self.eos_token_id)])


class ClipVisionEncoder(nn.Module):
    """CLIP's vision transformer and visual projection: pixels -> joint-space embedding."""

    tower_kind = "vision"

    def __init__(self, model: nn.Module, projection: nn.Linear):
        super().__init__()
        self.model = model
        self.projection = projection
        self.image_size = int(model.config.image_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(self.model(pixel_values=pixel_values).pooler_output)


def build_clip_model(spec: dict[str, Any]) -> nn.Module:
    """A Hugging Face ``CLIPModel`` from a ``clip`` spec: pretrained weights, or random init
    from ``hf_config`` (``"vocab_size": "tokenizer"`` sizes the text embedding to the tokenizer)."""
    import transformers

    hf_cfg = dict(spec.get("hf_config") or {})
    text_cfg = dict(hf_cfg.pop("text_config", {}))
    if spec.get("pretrained", False):
        if not spec.get("hf_model_name"):
            raise ValueError("clip: pretrained=true needs 'hf_model_name'")
        model = transformers.CLIPModel.from_pretrained(weights_location(spec["hf_model_name"]))
        if "eos_token_id" in text_cfg:  # the hub config may carry the legacy value 2
            model.text_model.config.eos_token_id = model.text_model.eos_token_id = int(text_cfg["eos_token_id"])
        return model
    if hf_cfg.pop("model_type", None) != "clip":
        raise ValueError("clip: random init needs 'hf_config' with model_type 'clip' (the architecture)")
    if text_cfg.get("vocab_size") == "tokenizer":
        text_cfg["vocab_size"] = len(load_tokenizer(tokenizer_name(spec)))
    config = transformers.CLIPConfig(text_config=text_cfg, vision_config=hf_cfg.pop("vision_config", {}), **hf_cfg)
    return transformers.AutoModel.from_config(config)  # (under ZeRO-3: built partitioned)


class ClipDualEncoder(nn.Module):
    """CLIP as a sticker selector (``task: "select"``) or a prompt classifier (``"classify"``)."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.config = cfg
        self.task = cfg.get("task", "classify")
        if self.task not in ("classify", "select"):
            raise ValueError(f"clip: task must be 'classify' or 'select', not '{self.task}'")
        self.heads_spec: dict[str, int] = dict(cfg.get("heads", {}))
        if self.task == "select" and self.heads_spec:
            raise ValueError("clip: a selection model has no classification heads; set \"heads\": {}")
        if self.task == "classify" and not self.heads_spec:
            raise ValueError("clip: a classification model needs 'heads'")
        self.fusion = cfg.get("fusion", "mean")
        if self.fusion not in FUSIONS:
            raise ValueError(f"clip: fusion must be one of {FUSIONS}, not '{self.fusion}'")
        self.in_batch_negatives = bool(cfg.get("in_batch_negatives", False))
        self.loss_weights = {k: float(cfg.get("loss_weights", {}).get(k, 1.0)) for k in self.heads_spec}

        spec = cfg["clip"]
        clip = build_clip_model(spec)
        self.text = ClipTextEncoder(clip.text_model, clip.text_projection, int(clip.text_model.eos_token_id))
        # Shape (1,): DeepSpeed cannot broadcast 0-dim parameters.
        self.logit_scale = nn.Parameter(clip.logit_scale.detach().reshape(1).clone())
        self.vision: ClipVisionEncoder | None = None
        if self.task == "select" or self.fusion != "text":
            self.vision = ClipVisionEncoder(clip.vision_model, clip.visual_projection)
            if int(cfg["image_size"]) != self.vision.image_size:
                raise ValueError(f"clip: image_size={cfg['image_size']} but the vision encoder takes "
                                 f"{self.vision.image_size} px images")
        self.normalize = ImageNormalize.for_tower(spec)
        self.has_prompts = self.task == "classify" and "label_names" in cfg
        if self.has_prompts:
            self._register_prompts(cfg["label_names"], cfg.get("prompt", "{label}"), tokenizer_name(spec))

    def _register_prompts(self, label_names: dict[str, list[str]], prompt: str | dict[str, str],
                          tokenizer: str) -> None:
        tok = load_tokenizer(tokenizer)
        for head, classes in self.heads_spec.items():
            names = label_names.get(head)
            if names is None or len(names) != classes:
                raise ValueError(f"clip: label_names['{head}'] must list {classes} class names, got {names}")
            template = prompt if isinstance(prompt, str) else prompt[head]
            enc = tok([template.format(label=name) for name in names], padding=True, truncation=True,
                      max_length=self.text.max_length, return_tensors="pt")
            self.register_buffer(f"prompt_ids_{head}", enc["input_ids"], persistent=False)
            self.register_buffer(f"prompt_mask_{head}", enc["attention_mask"], persistent=False)

    def scale(self) -> torch.Tensor:
        """``s = exp(logit_scale)``, at most 100, in fp32."""
        return self.logit_scale.float().exp().clamp(max=MAX_LOGIT_SCALE).squeeze(0)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm joint-space embeddings ``(N, D)`` of token ids ``(N, L)``, fp32."""
        return F.normalize(self.text(input_ids, attention_mask).float(), dim=-1)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unit-norm joint-space embeddings ``(..., D)`` of uint8 images ``(..., 3, H, W)``, fp32."""
        if self.vision is None:
            raise RuntimeError("clip: fusion='text' builds no vision encoder")
        shape = pixel_values.shape[:-3]
        pixels = self.normalize(pixel_values.reshape(-1, *pixel_values.shape[-3:]), model_dtype(self))
        return F.normalize(self.vision(pixels).float(), dim=-1).reshape(*shape, -1)

    def embed_queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encode_text(batch["input_ids"], batch["attention_mask"])

    def embed_stickers(self, pool: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encode_image(pool["pixel_values"])

    def sticker_parameters(self):
        """What :meth:`embed_stickers` depends on (frozen: its pool embeddings are kept for the run)."""
        return self.vision.parameters() if self.vision is not None else iter(())

    def query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fused classification query ``(B, D)``, unit norm."""
        if self.fusion == "image":
            return self.encode_image(batch["pixel_values"])
        text = self.embed_queries(batch)
        if self.fusion == "text":
            return text
        return F.normalize(self.encode_image(batch["pixel_values"]) + text, dim=-1)

    def class_embeddings(self, head: str) -> torch.Tensor:
        """Unit-norm prompt embeddings ``(C, D)`` of one head's classes."""
        if not self.has_prompts:
            raise RuntimeError("clip: classification needs the class names: the model config has no "
                               "'label_names' (the trainer adds them from the dataset manifest)")
        return self.encode_text(getattr(self, f"prompt_ids_{head}"), getattr(self, f"prompt_mask_{head}"))

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        if self.task == "select":
            return self._select(batch)
        return self._classify(batch)

    def _classify(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        query, s = self.query(batch), self.scale()
        # CLIP Fig. 3: logits = exp(t) * <query, class embedding>, both unit norm
        logits = {head: s * query @ self.class_embeddings(head).t() for head in self.heads_spec}
        terms = {f"ce_{head}": losses.cross_entropy(lg, batch[f"label_{head}"])
                 for head, lg in logits.items() if f"label_{head}" in batch}
        loss = sum(self.loss_weights[k[3:]] * v for k, v in terms.items()) if terms else query.sum() * 0.0
        return ModelOutput(loss=loss, losses=terms, logits=logits)

    def _select(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        query = self.embed_queries(batch)  # (B, D)
        candidates = self.encode_image(batch["candidate_pixel_values"])  # (B, K, D)
        s = self.scale()
        scores = s * torch.einsum("bd,bkd->bk", query, candidates)  # Int-RA's score: cos(text, sticker)
        if "target" not in batch:
            return ModelOutput(loss=scores.sum() * 0.0, scores=scores)
        target = batch["target"]
        terms = {"ce_select": losses.cross_entropy(scores, target)}
        if self.in_batch_negatives:
            positive = candidates[torch.arange(target.shape[0], device=target.device), target]
            terms["in_batch_nce"] = losses.symmetric_info_nce(query, positive, 1.0 / s)  # CLIP Fig. 3 loss
        return ModelOutput(loss=sum(terms.values()), losses=terms, scores=scores)


@register("clip")
def build_clip(cfg: dict[str, Any]) -> ClipDualEncoder:
    return ClipDualEncoder(cfg)
