"""Tiny random generative models, built offline from configs, in the Hugging Face format.

They exercise the real loading path (``from_pretrained`` of a directory: config, weights,
processor or tokenizer, chat template) without a download:

- ``builtin:tiny-llava``: LLaVA (CLIP vision tower + Llama), 32 px images;
- ``builtin:tiny-qwen2-vl``: Qwen2-VL (its own vision transformer, M-RoPE), 32-64 px;
- ``builtin:tiny-comet-bart``: a BART seq2seq with COMET's ``[GEN]`` and relation tokens.

Every one shares the project's offline WordPiece vocabulary plus the special tokens its
family needs, and a minimal chat template in the same message format as the real models.
"""

from __future__ import annotations

import os
from typing import Callable

PREFIX = "builtin:"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ image_token }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
COMET_RELATIONS = ("xIntent", "xNeed", "xWant", "xEffect", "xReact", "oWant", "oEffect", "oReact", "xAttr")


def _tokenizer(extra: list[str]):
    import transformers

    from ray_sticker.data.text import tiny_tokenizer_dir

    tok = transformers.BertTokenizerFast.from_pretrained(tiny_tokenizer_dir(), do_lower_case=True)
    tok.add_special_tokens({"additional_special_tokens": extra})
    return tok


def _chat_tokenizer(image_tokens: list[str]):
    """A decoder's tokenizer: BOS ([CLS]) first like Llama's, nothing appended after the text."""
    from tokenizers.processors import TemplateProcessing

    tok = _tokenizer(image_tokens + ["<|im_start|>", "<|im_end|>"])
    tok.eos_token = "<|im_end|>"
    tok.bos_token = tok.cls_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A", pair="[CLS] $A $B", special_tokens=[("[CLS]", tok.cls_token_id)])
    return tok


def _lm_ids(tok) -> dict[str, int]:
    return {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id}


def build_tiny_llava(out: str) -> None:
    import transformers as T

    tok = _chat_tokenizer(["<image>"])
    processor = T.LlavaProcessor(
        image_processor=T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE.replace("{{ image_token }}", "<image>"))
    config = T.LlavaConfig(
        vision_config=T.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=T.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                                  tie_word_embeddings=False, **_lm_ids(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1, tie_word_embeddings=False)
    T.LlavaForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)


def build_tiny_qwen2_vl(out: str) -> None:
    import transformers as T

    vision = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
    tok = _chat_tokenizer(vision)
    ids = {t: tok.convert_tokens_to_ids(t) for t in vision}
    patch = {"patch_size": 8, "merge_size": 2, "temporal_patch_size": 2}
    processor = T.Qwen2VLProcessor(
        image_processor=T.Qwen2VLImageProcessor(min_pixels=32 * 32, max_pixels=64 * 64, **patch),
        video_processor=T.Qwen2VLVideoProcessor(**patch), tokenizer=tok,
        chat_template=CHAT_TEMPLATE.replace("{{ image_token }}", "<|vision_start|><|image_pad|><|vision_end|>"))
    config = T.Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, tie_word_embeddings=False,
                         **_lm_ids(tok)),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    T.Qwen2VLForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)


def build_tiny_comet_bart(out: str) -> None:
    import transformers as T

    tok = _tokenizer(["[GEN]", *COMET_RELATIONS])
    tok.bos_token, tok.eos_token = tok.cls_token, tok.sep_token
    config = T.BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          decoder_start_token_id=tok.eos_token_id, forced_bos_token_id=None,
                          forced_eos_token_id=tok.eos_token_id)
    T.BartForConditionalGeneration(config).save_pretrained(out)
    tok.save_pretrained(out)


BUILDERS: dict[str, Callable[[str], None]] = {
    "tiny-llava": build_tiny_llava,
    "tiny-qwen2-vl": build_tiny_qwen2_vl,
    "tiny-comet-bart": build_tiny_comet_bart,
}


def is_builtin(uri: str) -> bool:
    return uri.startswith(PREFIX)


def builtin_dir(uri: str) -> str:
    """The directory of a ``builtin:<name>`` model, built once (atomically) under
    ``$RAY_STICKER_HOME/models``; the same seed gives the same weights everywhere."""
    import shutil
    import subprocess
    import tempfile

    from ray_sticker.config import default_home

    name = uri[len(PREFIX):]
    if name not in BUILDERS:
        raise ValueError(f"unknown built-in model '{uri}'; built-in: {', '.join(PREFIX + n for n in BUILDERS)}")
    root = os.path.join(default_home(), "models")
    final = os.path.join(root, name)
    if os.path.isdir(final) and not os.path.exists(os.path.join(final, _COMPLETE)):
        shutil.rmtree(final, ignore_errors=True)  # not built by this code: build it again
    if not os.path.isdir(final):
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=root)
        try:
            _build(name, tmp)
            if not os.path.exists(os.path.join(tmp, "config.json")):
                raise RuntimeError(f"building {uri} wrote no config.json into {tmp}")
            open(os.path.join(tmp, _COMPLETE), "w").close()
            os.rename(tmp, final)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"building {uri} failed: {exc.stderr.strip()[-2000:]}") from None
        except OSError:
            if not os.path.isdir(final):  # else another process published it first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


_COMPLETE = ".complete"  # written last into a finished build


def _build(name: str, out: str) -> None:
    """Build with seed 0, leaving the caller's random state alone. Inside a torch process group
    (a Ray Train worker) transformers writes model files on rank 0 only: build in a process of
    its own there."""
    import subprocess
    import sys

    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        subprocess.run([sys.executable, "-m", "ray_sticker.mllm.tiny", name, out], check=True,
                       capture_output=True, text=True)
        return
    with torch.random.fork_rng(), torch.device("cpu"):  # real weights even inside a meta-device context
        torch.manual_seed(0)
        BUILDERS[name](out)


if __name__ == "__main__":  # python -m ray_sticker.mllm.tiny NAME OUT_DIR (see builtin_dir)
    import sys

    import torch

    torch.manual_seed(0)
    BUILDERS[sys.argv[1]](sys.argv[2])
