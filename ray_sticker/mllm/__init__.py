"""Generative models used by ray-sticker: vision-language models (sticker descriptions,
MLLM baselines) and seq2seq models (COMET commonsense), loaded the same way from a hub
name, a local directory, an ``s3://`` URI or a ``builtin:tiny-*`` random test model."""
