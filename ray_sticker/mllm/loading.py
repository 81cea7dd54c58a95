"""Load generative models and run batched generation.

A model location is a hub name (``Qwen/Qwen2-VL-2B-Instruct``), a local directory, an
``s3://`` URI (downloaded once into the local object cache) or ``builtin:tiny-*`` (a tiny
random model built offline, see :mod:`ray_sticker.mllm.tiny`).

Vision-language models load through ``AutoModelForImageTextToText`` + ``AutoProcessor``
(LLaVA, LLaVA-NeXT, Qwen2-VL, … any model with a chat template), seq2seq models through
``AutoModelForSeq2SeqLM`` + ``AutoTokenizer`` (COMET-BART). Prompts are padded on the left
so that a batch's generated tokens start at the same position.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ray_sticker.mllm import tiny


def model_location(uri: str) -> str:
    """A path or hub name ``from_pretrained`` accepts."""
    from ray_sticker.data.text import weights_location

    if tiny.is_builtin(uri):
        return tiny.builtin_dir(uri)
    return weights_location(uri)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPU, fp32 on CPU; else ``float32`` / ``bfloat16`` / ``float16``."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype '{dtype}': use auto, float32, bfloat16 or float16") from None


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_vlm(uri: str, dtype: str = "auto", device: torch.device | None = None):
    """-> (model in eval mode on ``device``, processor with left padding)."""
    import transformers

    device = device or default_device()
    where = model_location(uri)
    try:
        processor = transformers.AutoProcessor.from_pretrained(where)
        model = transformers.AutoModelForImageTextToText.from_pretrained(where, dtype=resolve_dtype(dtype, device))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load a vision-language model from '{uri}': {exc}") from exc
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or getattr(processor, "chat_template", None) is None:
        raise ValueError(f"'{uri}' has no tokenizer or chat template: it is not a chat vision-language model")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), processor


def load_seq2seq(uri: str, dtype: str = "auto", device: torch.device | None = None):
    """-> (seq2seq model in eval mode on ``device``, tokenizer)."""
    import transformers

    device = device or default_device()
    where = model_location(uri)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(where)
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(where, dtype=resolve_dtype(dtype, device))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load a seq2seq model from '{uri}': {exc}") from exc
    return model.to(device).eval(), tokenizer


def user_message(text: str, images: int = 1) -> list[dict[str, Any]]:
    """One user turn: ``images`` image slots, then the text (the chat template places them)."""
    return [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}]


def vlm_inputs(processor, prompts: Sequence[str], images: Sequence[Sequence[np.ndarray]], model,
               answers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Model inputs of a batch: each prompt with its images (HWC uint8 arrays) in one user
    turn, rendered by the model's chat template, padded on the left (for generation). With
    ``answers`` the answer follows the generation prompt, the batch is padded on the right
    (every sequence starts at position 0, so a row's loss does not depend on the padding its
    batch needs) and ``labels`` mark only the answer's tokens (-100 elsewhere), for training."""
    texts = [processor.apply_chat_template(user_message(p, len(imgs)), add_generation_prompt=True)
             for p, imgs in zip(prompts, images)]
    tok = processor.tokenizer
    answer_lengths = None
    if answers is not None:
        eos = tok.eos_token or ""
        texts = [t + a + eos for t, a in zip(texts, answers)]
        answer_lengths = [len(tok(a + eos, add_special_tokens=False)["input_ids"]) for a in answers]
    flat = [img for imgs in images for img in imgs]
    side = tok.padding_side
    tok.padding_side = "left" if answers is None else "right"
    try:
        enc = processor(text=texts, images=flat or None, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    accepted = _forward_args(model)
    out = {k: v for k, v in enc.items() if k in accepted and isinstance(v, torch.Tensor)}
    if answer_lengths is not None:
        # The answer is the last n tokens of each row, before any the tokenizer appends itself.
        ends = out["attention_mask"].sum(dim=1) - _appended_specials(tok)
        labels = torch.full_like(out["input_ids"], -100)
        for i, (n, end) in enumerate(zip(answer_lengths, ends.tolist())):
            labels[i, end - n:end] = out["input_ids"][i, end - n:end]
        out["labels"] = labels
    return out


def _appended_specials(tokenizer) -> int:
    """How many special tokens the tokenizer appends after a text (BERT's [SEP]: 1; Llama: 0)."""
    plain = tokenizer("a b", add_special_tokens=False)["input_ids"]
    full = tokenizer("a b")["input_ids"]
    starts = [i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain]
    return len(full) - starts[-1] - len(plain) if starts else 0


@torch.no_grad()
def seq2seq_generate(model, tokenizer, texts: Sequence[str], max_new_tokens: int = 24, num_beams: int = 1,
                     num_return_sequences: int = 1, max_length: int = 128) -> list[list[str]]:
    """``num_return_sequences`` decoded outputs per input text (beam search when ``num_beams`` > 1)."""
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                    return_token_type_ids=False)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    out = model.generate(**enc, max_new_tokens=max_new_tokens, num_beams=max(num_beams, num_return_sequences),
                         num_return_sequences=num_return_sequences, do_sample=False)
    decoded = tokenizer.batch_decode(out, skip_special_tokens=True)
    k = num_return_sequences
    return [[d.strip() for d in decoded[i * k:(i + 1) * k]] for i in range(len(texts))]


def _forward_args(model) -> set[str]:
    """The inputs the model's forward names (a peft wrapper: its base model's)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters) - {"kwargs"}


@torch.no_grad()
def generate_texts(model, processor, prompts: Sequence[str], images: Sequence[Sequence[np.ndarray]],
                   max_new_tokens: int = 32, **generate_kwargs) -> list[str]:
    """Greedy (or ``generate_kwargs``) answers of a vision-language model, one per prompt."""
    inputs = {k: v.to(model.device) for k, v in vlm_inputs(processor, prompts, images, model).items()}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **generate_kwargs)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def images_from_bytes(blobs: Sequence[bytes | None], where: str = "images") -> list[np.ndarray | None]:
    """Decoded RGB HWC uint8 arrays (None where a blob is missing or cannot be decoded)."""
    from ray_sticker.data.images import ImageDecodeError, decode_image

    out: list[np.ndarray | None] = []
    for blob in blobs:
        if blob is None or len(blob) == 0:
            out.append(None)
            continue
        try:
            out.append(np.asarray(decode_image(blob).convert("RGB")))
        except ImageDecodeError:
            out.append(None)
    return out
