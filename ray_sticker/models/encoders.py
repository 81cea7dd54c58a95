"""Text and vision towers built from architecture configs.

Text towers are Hugging Face ``transformers`` encoders; vision towers are ``open_clip``
vision transformers. A tower spec (a dict in a model config JSON) says where weights come
from:

text::

    {"hf_model_name": "xlm-roberta-base",   # hub name, local directory or s3:// URI
     "pretrained": true,                     # false: random init from "hf_config"
     "hf_config": {"model_type": "xlm-roberta", ...},   # architecture without download
     "tokenizer": "xlm-roberta-base"}        # defaults to hf_model_name; "builtin:tiny" offline

vision::

    {"open_clip_model": "ViT-B-32",          # open_clip architecture name
     "pretrained": "openai" | "/path/ckpt.pt" | "s3://b/ckpt.pt" | null,
     "vision_cfg": {...}}                    # or an explicit CLIPVisionCfg (tiny configs)

    {"hf_model_name": "facebook/dinov2-base", # a Hugging Face vision encoder (DINOv2, ...):
     "pretrained": true,                      # hub name, local directory or s3:// URI
     "hf_config": {"model_type": "dinov2", "image_size": 518, ...},   # architecture (random init)
     "image_size": 224,                       # input resolution, if not the architecture's
     "image_mean": [...], "image_std": [...]} # its normalisation (default: CLIP's)

Both towers return ``(tokens, pooled)``: per-token features ``(B, T, D)`` and one pooled
vector ``(B, D)`` (the text pooler output / CLS token; the vision pooled token before
CLIP's projection), with ``D = tower.width``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

# Tokenizers live in a torch-free module (Ray Data workers tokenize without importing torch).
from ray_sticker.data.text import load_tokenizer, tokenizer_name, weights_location
from ray_sticker.models import partitioned


def hf_encoder(spec: dict[str, Any], tower: str, hf_config: dict[str, Any]) -> nn.Module:
    """A Hugging Face ``AutoModel``: pretrained from ``spec["hf_model_name"]`` (hub name, local
    directory or s3:// URI), else random weights of the architecture ``hf_config``."""
    import transformers

    if spec.get("pretrained", False):
        if not spec.get("hf_model_name"):
            raise ValueError(f"{tower} tower: pretrained=true needs 'hf_model_name'")
        return transformers.AutoModel.from_pretrained(weights_location(spec["hf_model_name"]))
    if "model_type" not in hf_config:
        raise ValueError(f"{tower} tower: random init needs 'hf_config' (the architecture, with its model_type)")
    config = dict(hf_config)
    return transformers.AutoModel.from_config(transformers.AutoConfig.for_model(config.pop("model_type"), **config))


class TextTower(nn.Module):
    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = dict(spec)
        hf_cfg = dict(spec.get("hf_config", {}))
        if hf_cfg.get("vocab_size") == "tokenizer":  # size the embedding to the tokenizer
            hf_cfg["vocab_size"] = len(load_tokenizer(tokenizer_name(spec)))
        self.encoder = hf_encoder(spec, "text", hf_cfg)
        self.width = int(self.encoder.config.hidden_size)
        self.use_pooler = bool(spec.get("use_pooler", True)) and getattr(self.encoder, "pooler", None) is not None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        tokens = out.last_hidden_state
        pooled = out.pooler_output if self.use_pooler and out.pooler_output is not None else tokens[:, 0]
        return tokens, pooled


class VisionTower(nn.Module):
    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = dict(spec)
        self.hf = "hf_model_name" in spec or "hf_config" in spec
        if self.hf:
            self._init_hf(spec)
        else:
            self._init_open_clip(spec)

    def _init_hf(self, spec: dict[str, Any]) -> None:
        """A Hugging Face vision encoder (``AutoModel``: DINOv2, ViT, ...); its pooled output is
        the pooler's (DINOv2: the layer-normed CLS token)."""
        self.encoder = hf_encoder(spec, "vision", dict(spec.get("hf_config", {})))
        self.resnet = False
        self.width = int(self.encoder.config.hidden_size)
        self.image_size = int(spec.get("image_size") or self.encoder.config.image_size)  # input, may differ

    def _init_open_clip(self, spec: dict[str, Any]) -> None:
        import open_clip
        from open_clip.model import _build_vision_tower

        name = spec.get("open_clip_model")
        pretrained = spec.get("pretrained")
        if "vision_cfg" in spec:
            vision_cfg, embed_dim, quick_gelu = dict(spec["vision_cfg"]), int(spec.get("embed_dim", 0)), False
        elif name:
            model_cfg = open_clip.get_model_config(name)
            if model_cfg is None:
                raise ValueError(f"vision tower: unknown open_clip model '{name}'; see open_clip.list_models()")
            vision_cfg, embed_dim = model_cfg["vision_cfg"], model_cfg["embed_dim"]
            quick_gelu = bool(model_cfg.get("quick_gelu", False)) or pretrained == "openai"
        else:
            raise ValueError("vision tower: give 'open_clip_model' or 'vision_cfg'")
        # A list of stage depths makes open_clip build a ModifiedResNet (RN50 …): its output is
        # the attention-pooled vector (embed_dim wide), one "token".
        self.resnet = isinstance(vision_cfg.get("layers"), (list, tuple))
        if not self.resnet:
            vision_cfg.setdefault("output_tokens", True)
        with partitioned.module_init():  # ZeRO-3: partitioned as built (see models/partitioned.py)
            visual = _build_vision_tower(embed_dim or vision_cfg.get("width", 64), vision_cfg, quick_gelu=quick_gelu)
        if pretrained:
            _load_open_clip_visual(visual, name, pretrained)
        elif self.resnet and partitioned.active():
            # ModifiedResNet initialises its submodules' weights in its own constructor, after
            # zero.Init has partitioned them (those writes went nowhere): again, gathered.
            partitioned.gathered_init(visual, lambda m: m.init_parameters())
        if not self.resnet:
            visual.proj = None  # pooled output at the tower width (the "pooler output")
            visual.output_tokens = True
        self.visual = visual
        self.width = int(embed_dim if self.resnet else vision_cfg["width"])
        self.image_size = vision_cfg.get("image_size", 224)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hf:
            out = self.encoder(pixel_values=pixel_values)
            pooled = out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]
            return out.last_hidden_state, pooled
        if self.resnet:
            pooled = self.visual(pixel_values)
            return pooled.unsqueeze(1), pooled
        pooled, tokens = self.visual(pixel_values)
        return tokens, pooled


def vision_image_size(spec: dict[str, Any]) -> int:
    """The input resolution of a vision tower spec, without building it."""
    if "hf_model_name" in spec or "hf_config" in spec:
        if spec.get("image_size"):  # the input resolution, where it differs from the architecture's
            size = spec["image_size"]
        elif "image_size" in spec.get("hf_config", {}):
            size = spec["hf_config"]["image_size"]
        else:
            import transformers

            size = transformers.AutoConfig.from_pretrained(weights_location(spec["hf_model_name"])).image_size
    elif "vision_cfg" in spec:
        size = spec["vision_cfg"].get("image_size", 224)
    else:
        import open_clip

        model_cfg = open_clip.get_model_config(spec["open_clip_model"])
        if model_cfg is None:
            raise ValueError(f"vision tower: unknown open_clip model '{spec['open_clip_model']}'")
        size = model_cfg["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _load_open_clip_visual(visual: nn.Module, name: str | None, pretrained: str) -> None:
    """Copy pretrained weights into a vision tower. Under partitioned construction only rank 0
    reads them (the others get their names and shapes) and they go in module by module."""
    arch = name or "the configured vision_cfg"
    state, shapes = partitioned.read_on_rank0(lambda: _read_open_clip_visual(name, pretrained))
    try:
        missing, unexpected = partitioned.load_partitioned(visual, state, shapes)
    except ValueError as exc:
        raise ValueError(f"vision weights {pretrained} do not match {arch}: {exc}") from None
    missing = [k for k in missing if k != "proj"]
    if missing or unexpected:
        raise ValueError(
            f"vision weights {pretrained} do not match {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _read_open_clip_visual(name: str | None, pretrained: str) -> dict[str, torch.Tensor]:
    """The vision tower's state dict from a checkpoint file (memory-mapped where its format
    allows: values are read as they are copied) or an open_clip pretrained tag."""
    location = weights_location(pretrained)
    if os.path.exists(location):
        try:
            state = torch.load(location, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(location, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if any(k.startswith("visual.") for k in state):
            state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        return state
    import open_clip  # an open_clip pretrained tag such as "openai" (downloads on first use)

    return open_clip.create_model(name, pretrained=pretrained).visual.state_dict()
