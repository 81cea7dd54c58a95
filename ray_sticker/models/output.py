"""The one contract every model follows: ``forward(batch) -> ModelOutput``.

What the pipeline puts in ``batch`` is declared by the model's architecture config
(``models/configs/*.json``), so a model never reads columns itself:

``task``
    ``"classify"`` or ``"select"``.
``heads`` ``{label: classes}``
    Required labels: rows without one are skipped (and counted). ``batch["label_<label>"]``
    ``(B,)`` int64. ``model.heads_spec`` must equal this dict; the loop reports accuracy,
    weighted-F1 and macro-F1 of ``output.logits[label]`` for every head.
``aux_labels`` ``{label: classes}``
    Optional labels (e.g. the dialogue's emotion for a selection model): ``label_<label>``
    ``(B,)`` with -1 where the row has none; losses ignore -1.
``text_inputs`` ``{name: {"columns": [...], "max_length": int, "default": str, "tower": key,
"separate": bool, "columns_when": {flag: [...]}}}``
    Each becomes token ids ``(B, L)``: ``input_ids``/``attention_mask`` for ``name == "text"``,
    ``<name>_input_ids``/``<name>_attention_mask`` otherwise. The columns' values (a list of
    turns is one value) are joined with the tokenizer's separator, or with
    ``"separate": true`` tokenized one column each into ``(B, C, L)``; a null value gives
    ``default`` (or the empty string). ``columns_when`` appends columns when the named
    boolean field of the model config is true (an ablation switch such as
    ``use_knowledge`` then changes the model's inputs too). ``tower`` names the config key
    of the tower whose ``tokenizer`` (or ``hf_model_name``) is used (default ``"text"``);
    ``max_length`` defaults to ``data.max_text_length``. ``"raw": true`` skips tokenization:
    each column's text arrives as UTF-8 bytes ``<name>_bytes`` ``(B, C, max_length)`` uint8
    (``max_length`` in bytes, default 1024; ``data.pipeline.decode_texts`` turns them back
    into strings) for models that build their own prompts. Default when a ``text`` tower
    exists: ``{"text": {"columns": ["context"]}}``.
``vision`` (an open_clip tower spec) or ``image_size``
    The model reads images: classification batches carry the example's image as
    ``pixel_values`` ``(B, 3, H, W)`` uint8 (normalise with ``layers.ImageNormalize``). A
    model whose image encoder is not an open_clip ``vision`` spec declares ``image_size``.

Backbones are ``encoders.TextTower`` / ``encoders.VisionTower`` modules (or declare
``tower_kind = "text"|"vision"`` on another backbone module): the engine freezes them
(``model.freeze_text`` / ``freeze_vision``) and gives them their own learning rates by
type, whatever the attribute is called.

Selection (``task: "select"``) batches also carry the candidate stickers, gathered from
the sticker pool each worker holds (``stickers`` table, decoded once):

- ``candidate_idx`` ``(B, K)`` rows of the pool; ``target`` ``(B,)`` the position of the
  positive among the K candidates (-1 never occurs: rows without it are skipped);
- ``candidate_pixel_values`` ``(B, K, 3, H, W)`` uint8 when the model has a vision tower;
- ``candidate_<name>_input_ids`` / ``_attention_mask`` ``(B, K, L)``, or ``(B, K, C, L)``
  with ``"separate": true``, for each ``sticker_inputs`` entry
  ``{name: {"columns": [...], "separate": bool, "max_length": int, "default": str}}``
  (e.g. Int-RA's four attribute descriptions as ``C = 4`` separate texts);
- ``candidate_emotion``, ``candidate_intent`` ``(B, K)``: the stickers' labels, -1 if none.

Models that score a sticker independently of the query (two towers, e.g. Int-RA, CLIP)
also implement ``embed_queries(batch) -> (B, D)`` and ``embed_stickers(pool) -> (N, D)``,
where ``pool`` holds the same keys without the ``candidate_`` prefix and with a leading
``N``; the score is their cosine. Evaluation then ranks the whole pool
(``data.eval_candidates: pool``).

``label_names`` ``{label: [names]}`` is added to the model config from the dataset's
manifest (e.g. Int-RA encodes the text of the predicted intent label).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelOutput:
    """``loss``: the total to backpropagate; ``losses``: its named terms (logged separately);
    ``logits``: per classification head ``(B, C)``; ``scores``: selection scores ``(B, K)``
    (higher is better). Generative models (the MLLM baselines) add, in evaluation:
    ``predictions`` per head ``(B,)`` (-1: no class could be read; counted wrong),
    ``unparsed`` ``(B,)`` bool (answers that could not be parsed) and the ``answers`` text."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    scores: torch.Tensor | None = None
    predictions: dict[str, torch.Tensor] = field(default_factory=dict)
    unparsed: torch.Tensor | None = None
    answers: list[str] | None = None
