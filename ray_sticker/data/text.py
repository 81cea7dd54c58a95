"""Tokenizers by hub name, local directory, ``s3://`` URI or ``builtin:tiny`` (the project's
offline WordPiece vocabulary), and where model weights are read from.

Torch-free on purpose: Ray Data's preprocessing tasks tokenize in fresh worker processes, and
importing torch there would add seconds to every run's first batches.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from ray_sticker import storage

TINY_TOKENIZER = "builtin:tiny"


def weights_location(uri: str) -> str:
    """Hub names pass through; local paths are expanded; s3:// objects are cached locally."""
    if storage.is_s3(uri):
        return storage.local_copy(uri)
    expanded = os.path.expanduser(uri)
    return expanded if os.path.exists(expanded) else uri


_TINY_WORDS = (
    "the a an and or but so to of in on at for with my your our their this that it is was "
    "are were be been today yesterday tomorrow day night morning evening friends family home "
    "work school city train coffee tea food rain sun weather we you they he she i me us went "
    "saw felt feel got have had very really quite just not no yes"
).split()


def _tiny_vocab() -> list[str]:
    from ray_sticker.data.synthetic import VOCABULARY
    from ray_sticker.data.synthetic_select import VOCABULARY as SELECT_VOCABULARY

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    punct = list(".,!?'\"-:;()#@&")
    words = sorted(set(_TINY_WORDS) | set(VOCABULARY) | set(SELECT_VOCABULARY))
    return specials + chars + ["##" + c for c in chars] + punct + [w for w in words if w not in chars]


def tiny_tokenizer_dir() -> str:
    """Write the project's offline WordPiece vocabulary (once) and return its directory."""
    from ray_sticker.config import default_home

    vocab = _tiny_vocab()
    out = os.path.join(default_home(), "tokenizers", f"tiny-{len(vocab)}")
    path = os.path.join(out, "vocab.txt")
    if not os.path.exists(path):
        os.makedirs(out, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(vocab) + "\n")
        os.replace(tmp, path)
    return out


def tiny_vocab_size() -> int:
    return len(_tiny_vocab())


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str):
    """A tokenizer by hub name, local directory, s3:// URI or ``builtin:tiny`` (offline)."""
    import transformers

    if name == TINY_TOKENIZER:
        return transformers.BertTokenizerFast.from_pretrained(tiny_tokenizer_dir(), do_lower_case=True)
    return transformers.AutoTokenizer.from_pretrained(weights_location(name))


def tokenizer_name(text_spec: dict[str, Any]) -> str:
    name = text_spec.get("tokenizer") or text_spec.get("hf_model_name")
    if not name:
        raise ValueError("text tower needs 'tokenizer' or 'hf_model_name'")
    return name
