"""MLLM baselines: a vision-language model answers the task in text.

MSAIRS evaluates GPT-4o and open MLLMs (llava-v1.6-mistral-7b) zero-shot, asking for the
sentiment and intent as numbers. Here any chat vision-language model that loads with
``AutoModelForImageTextToText`` (LLaVA, LLaVA-NeXT, Qwen2-VL, …) is a model of the registry,
trained and evaluated by the same loop as the others:

- classification: the prompt holds the context, the sticker's text and the label maps
  spelled out as numbers (``mllm/prompts.py``); the sticker image goes with it; the target is
  ``"sentiment: 1, intent: 7"``;
- selection: the K candidates are numbered images; the target is the positive's number.

Training minimises the language-modelling loss of the answer tokens only (prompt and padding
are masked), fully fine-tuned or with LoRA adapters (``"lora"``, via peft) on the language
model. In evaluation the model also generates greedily; answers are parsed
(``mllm/answers.py``) into predictions, and an answer that cannot be parsed counts as wrong
and is counted (``val_unparsed``). ``train.epochs: 0`` is the zero-shot baseline.

Under ZeRO-3 the parameters are partitioned across ranks; generation then runs with
``synced_gpus`` so that every rank keeps stepping until all have finished.

Config keys: ``model`` (hub name, directory, s3:// URI or ``builtin:tiny-*``), ``dtype``,
``image_size`` (the pipeline's image resolution; the processor resizes further),
``heads`` (classification), ``text_inputs`` (a raw ``prompt`` input over ``context`` and
``sticker_text``), ``max_new_tokens``, ``lora`` (``{"r", "alpha", "dropout",
"target_modules"}`` or null), ``gradient_checkpointing``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ray_sticker.data.pipeline import decode_texts
from ray_sticker.mllm import answers, prompts
from ray_sticker.mllm.loading import generate_texts, load_vlm, vlm_inputs
from ray_sticker.models.output import ModelOutput
from ray_sticker.models.registry import register

# The language model's attention projections (Llama, Mistral, Qwen2 …); the vision tower's
# layers (CLIP's q_proj too) are left out by the path.
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"
_VISION_NAMES = ("vision_tower", "visual", "vision_model")
_TEXT_NAMES = ("language_model",)


def _mark_towers(model: nn.Module) -> None:
    """Declare the backbone parts so ``model.freeze_text`` / ``freeze_vision`` and the per-tower
    learning rates apply (see train/engine.py)."""
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in _VISION_NAMES:
            module.tower_kind = "vision"
        elif last in _TEXT_NAMES:
            module.tower_kind = "text"


class MLLMBaseline(nn.Module):
    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.config = cfg
        self.task = cfg.get("task", "classify")
        self.heads_spec = dict(cfg.get("heads", {}))
        if self.task == "classify" and not self.heads_spec:
            raise ValueError("mllm: a classification baseline needs \"heads\" (e.g. {\"sentiment\": 3})")
        self.label_names = {k: list(v) for k, v in cfg.get("label_names", {}).items()}
        self.max_new_tokens = int(cfg.get("max_new_tokens", 16))
        if "model" not in cfg:
            raise ValueError("mllm: \"model\" names the vision-language model (hub name, directory, s3:// or builtin:)")
        self.model, self.processor = load_vlm(cfg["model"], dtype=cfg.get("dtype", "float32"),
                                              device=torch.device("cpu"))
        if cfg.get("gradient_checkpointing"):
            self.model.gradient_checkpointing_enable()
        _mark_towers(self.model)
        if cfg.get("lora"):
            self.model = _with_lora(self.model, cfg["lora"])
        self._synced: bool | None = None

    # ------------------------------------------------------------------ inputs

    def _questions(self, batch: dict[str, torch.Tensor]) -> tuple[list[str], list[list[np.ndarray]], list[str]]:
        """(prompts, images per prompt as HWC uint8, target answers) of a batch."""
        texts = decode_texts(batch["prompt_bytes"])  # (B, C): context [, sticker text]
        if self.task == "select":
            pixels = batch["candidate_pixel_values"].permute(0, 1, 3, 4, 2).cpu().numpy()
            k = pixels.shape[1]
            questions = [prompts.select_prompt(t[0], k) for t in texts]
            images = [list(p) for p in pixels]
            targets = [prompts.select_answer(int(i)) for i in batch["target"].tolist()]
        else:
            pixels = batch["pixel_values"].permute(0, 2, 3, 1).cpu().numpy()
            questions = [prompts.classify_prompt(t[0], t[1] if len(t) > 1 else "", self.heads_spec,
                                                 self.label_names) for t in texts]
            images = [[p] for p in pixels]
            labels = {h: batch[f"label_{h}"].tolist() for h in self.heads_spec}
            targets = [prompts.classify_answer({h: labels[h][i] for h in self.heads_spec}) for i in range(len(texts))]
        return questions, images, targets

    def _to_model(self, inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        dtype = next(self.model.parameters()).dtype
        return {k: v.to(device, dtype=dtype if v.is_floating_point() else None) for k, v in inputs.items()}

    def _synced_gpus(self) -> bool:
        """ZeRO-3 with several ranks: generation must step on every rank until all are done."""
        if self._synced is None:
            import torch.distributed as dist

            partitioned = any(hasattr(p, "ds_id") for p in self.model.parameters())
            self._synced = partitioned and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        return self._synced

    # ------------------------------------------------------------------ forward

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        device = next(iter(batch.values())).device
        questions, images, targets = self._questions(batch)
        inputs = self._to_model(vlm_inputs(self.processor, questions, images, self.model, answers=targets), device)
        loss = self.model(**inputs).loss
        if self.training:
            return ModelOutput(loss=loss, losses={"lm": loss.detach()})
        generated = generate_texts(self.model, self.processor, questions, images, self.max_new_tokens,
                                   synced_gpus=self._synced_gpus())
        return self._parsed(generated, loss, len(questions), device, batch)

    def _parsed(self, generated: list[str], loss: torch.Tensor, n: int, device: torch.device,
                batch: dict[str, torch.Tensor]) -> ModelOutput:
        if self.task == "select":
            k = batch["candidate_idx"].shape[1]
            choices = [answers.parse_choice(g, k) for g in generated]
            scores = torch.zeros(n, k, device=device)  # an unparsed answer ties every candidate: ranked last
            for i, c in enumerate(choices):
                if c is not None:
                    scores[i, c] = 1.0
            unparsed = torch.tensor([c is None for c in choices], device=device)
            return ModelOutput(loss=loss, scores=scores, unparsed=unparsed, answers=generated)
        parsed = [answers.parse_labels(g, self.heads_spec, self.label_names) for g in generated]
        predictions = {h: torch.tensor([-1 if p[h] is None else p[h] for p in parsed], device=device)
                       for h in self.heads_spec}
        logits = {h: nn.functional.one_hot(pred.clamp(min=0), n_cls).float() * (pred >= 0).unsqueeze(1)
                  for (h, n_cls), pred in zip(self.heads_spec.items(), predictions.values())}
        unparsed = torch.tensor([any(v is None for v in p.values()) for p in parsed], device=device)
        return ModelOutput(loss=loss, logits=logits, predictions=predictions, unparsed=unparsed, answers=generated)


def _with_lora(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """LoRA adapters on the language model (peft); every other weight frozen."""
    from peft import LoraConfig, get_peft_model

    unknown = set(spec) - {"r", "alpha", "dropout", "target_modules"}
    if unknown:
        raise ValueError(f"mllm: unknown lora keys {sorted(unknown)}; allowed: r, alpha, dropout, target_modules")
    config = LoraConfig(r=int(spec.get("r", 8)), lora_alpha=int(spec.get("alpha", 16)),
                        lora_dropout=float(spec.get("dropout", 0.05)),
                        target_modules=spec.get("target_modules", DEFAULT_LORA_TARGETS))
    return get_peft_model(model, config)


@register("mllm")
def build(cfg: dict[str, Any]) -> nn.Module:
    return MLLMBaseline(cfg)
