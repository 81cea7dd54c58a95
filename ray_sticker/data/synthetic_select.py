"""A synthetic sticker-selection dataset whose answer depends on the dialogue's emotion and
intention, not on surface matching.

Stickers: each of the 7 emotions (cnsenti's categories) × 4 intentions has
``stickers_per_pair`` stickers. A sticker's emotion is the colour of its shape and its
intention the shape (disk, square, triangle, ring); its attribute descriptions (the
columns an MLLM fills for Int-RA) name them with words that never occur in dialogues
(``FACIAL``, ``GESTURE``, ``VERBAL``), so word overlap between the context and the sticker
side cannot solve the task.

Dialogues: the last turn carries an emotion cue word (``EMOTION_WORDS``) in 3 of 4
dialogues and an intention cue word (``INTENT_WORDS``) in 1 of 2; the commonsense columns
always carry both, with their own words (``xReact``: the emotion, ``xIntent``: the
intention) — knowledge helps. The example's ``emotion`` and ``intent`` labels are always set.

Candidates: the positive (a sticker of the dialogue's emotion and intention) and 9
distractors — 3 of the same emotion and another intention, 3 of the same intention and
another emotion, 3 differing in both; no distractor shares both labels with the
positive. A model that reads only the emotion (or only the intention) can at best pick
among 4 look-alikes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_sticker import storage
from ray_sticker.data import schema
from ray_sticker.data.synthetic import FILLER, SPLITS, VERSION, cue_image, with_cues, write_examples

EMOTION_LABELS = ["good", "joy", "sadness", "anger", "fear", "disgust", "surprise"]
INTENT_LABELS = ["greet", "thank", "complain", "ask"]
NUM_CANDIDATES = 10

EMOTION_WORDS = [["kind", "pleasant", "nice"], ["party", "celebrate", "wonderful"], ["lonely", "miss", "tears"],
                 ["furious", "unfair", "annoying"], ["scared", "nervous", "afraid"], ["gross", "filthy", "nasty"],
                 ["suddenly", "unexpected", "wow"]]
INTENT_WORDS = [["hello", "hey", "hi"], ["appreciate", "helped", "favor"], ["terrible", "worst", "again"],
                ["could", "please", "question"]]
REACT_WORDS = ["content", "elated", "heartbroken", "enraged", "anxious", "repulsed", "astonished"]
XINTENT_WORDS = ["welcome", "repay", "protest", "request"]
FACIAL = ["gentle smile", "grinning", "crying", "frowning", "trembling", "grimacing", "gasping"]
GESTURE = ["waving", "bowing", "pointing", "shrugging"]
VERBAL = ["yo", "ty", "ugh", "hmm"]
POSTURE = ["standing", "sitting", "leaning", "jumping", "lying"]
EMOTION_COLOURS = [(235, 200, 40), (250, 120, 30), (60, 90, 220), (220, 30, 30), (140, 60, 200),
                   (60, 160, 60), (240, 240, 240)]
SHAPES = ["disk", "square", "triangle", "ring"]
VOCABULARY = sorted({w for group in (EMOTION_WORDS + INTENT_WORDS) for w in group}
                    | {w for phrase in REACT_WORDS + XINTENT_WORDS + FACIAL + GESTURE + VERBAL + POSTURE
                       for w in phrase.split()}
                    | {"to", "feels", "needs", "wants", "gets", "reply", "friend", "answer"})


def stickers_table(stickers_per_pair: int = 3, seed: int = 0, image_size: int = 48) -> pa.Table:
    rng = np.random.default_rng([seed, 1])
    rows: dict[str, list] = {k: [] for k in ("sticker_id", "image", "set_id", "ocr_text", "emotion", "intent",
                                             "desc_gesture", "desc_posture", "desc_facial", "desc_verbal")}
    for e in range(len(EMOTION_LABELS)):
        for i in range(len(INTENT_LABELS)):
            for k in range(stickers_per_pair):
                rows["sticker_id"].append(f"st-{e}{i}{k}")
                rows["image"].append(cue_image(rng, EMOTION_COLOURS[e], SHAPES[i], image_size))
                rows["set_id"].append(f"set-{e}")
                rows["ocr_text"].append(VERBAL[i])
                rows["emotion"].append(e)
                rows["intent"].append(i)
                rows["desc_gesture"].append(GESTURE[i])
                rows["desc_posture"].append(str(rng.choice(POSTURE)))
                rows["desc_facial"].append(FACIAL[e])
                rows["desc_verbal"].append(VERBAL[i])
    return schema.conform(pa.table(rows), "stickers")


def _candidates(rng: np.random.Generator, positive: str, by_pair: dict[tuple[int, int], list[str]],
                e: int, i: int) -> list[str]:
    same_e = [s for (pe, pi), ids in by_pair.items() if pe == e and pi != i for s in ids]
    same_i = [s for (pe, pi), ids in by_pair.items() if pi == i and pe != e for s in ids]
    other = [s for (pe, pi), ids in by_pair.items() if pe != e and pi != i for s in ids]
    picks = [positive]
    for group in (same_e, same_i, other):
        picks += [group[j] for j in rng.choice(len(group), size=3, replace=False)]
    return [picks[j] for j in rng.permutation(len(picks))]


def select_rows(num_rows: int, stickers: pa.Table, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng([seed, 2])
    by_pair: dict[tuple[int, int], list[str]] = {}
    for sid, e, i in zip(stickers["sticker_id"].to_pylist(), stickers["emotion"].to_pylist(),
                         stickers["intent"].to_pylist()):
        by_pair.setdefault((e, i), []).append(sid)
    names = list(SPLITS)
    bounds = np.cumsum([SPLITS[s] for s in names]) * num_rows
    cols = ("example_id", "split", "language", "context", "sticker_id", "candidate_ids", "emotion", "intent",
            "comet_xIntent", "comet_xNeed", "comet_xWant", "comet_xEffect", "comet_xReact")
    rows: dict[str, list] = {k: [] for k in cols}
    for n in range(num_rows):
        e, i = int(rng.integers(len(EMOTION_LABELS))), int(rng.integers(len(INTENT_LABELS)))
        cues = []
        if rng.random() < 0.75:
            cues.append(str(rng.choice(EMOTION_WORDS[e])))
        if rng.random() < 0.5:
            cues.append(str(rng.choice(INTENT_WORDS[i])))
        turns = [with_cues(rng, [], FILLER, 3, 7) for _ in range(int(rng.integers(1, 3)))]
        turns.append(with_cues(rng, cues, FILLER, 3, 7))
        positive = by_pair[(e, i)][int(rng.integers(len(by_pair[(e, i)])))]
        rows["example_id"].append(f"sel-{n:06d}")
        rows["split"].append(names[int(np.searchsorted(bounds, n, side="right"))])
        rows["language"].append("en")
        rows["context"].append(turns)
        rows["sticker_id"].append(positive)
        rows["candidate_ids"].append(_candidates(rng, positive, by_pair, e, i))
        rows["emotion"].append(e)
        rows["intent"].append(i)
        rows["comet_xIntent"].append(f"to {XINTENT_WORDS[i]}")
        rows["comet_xNeed"].append(f"needs a {str(rng.choice(['friend', 'answer']))}")
        rows["comet_xWant"].append("wants to get a reply")
        rows["comet_xEffect"].append("gets a reply")
        rows["comet_xReact"].append(f"feels {REACT_WORDS[e]}")
    return schema.conform(pa.table(rows), "examples")


def make_select_dataset(uri: str, num_rows: int = 1600, seed: int = 0, image_size: int = 48,
                        stickers_per_pair: int = 3, rows_per_shard: int = 512) -> schema.Manifest:
    """Write the synthetic selection dataset (examples + stickers, manifest last) to ``uri``."""
    stickers = stickers_table(stickers_per_pair, seed=seed, image_size=image_size)
    table = select_rows(num_rows, stickers, seed=seed)
    storage.ensure_bucket(uri)
    schema.remove_dataset(uri)  # replace any dataset there: unpublished first, then deleted
    counts = write_examples(table, uri, rows_per_shard=rows_per_shard)
    fs, base = storage.resolve(schema.stickers_uri(uri))
    fs.create_dir(base, recursive=True)
    pq.write_table(stickers, f"{base}/part-00000.parquet", filesystem=fs)
    manifest = schema.Manifest(
        name="synthetic-select",
        task="select",
        label_maps={"emotion": EMOTION_LABELS, "intent": INTENT_LABELS},
        splits=counts,
        stickers=stickers.num_rows,
        source_format="synthetic",
        source_version=VERSION,
        extra={"seed": seed, "image_size": image_size, "num_candidates": NUM_CANDIDATES,
               "signal": "positive = sticker of the dialogue's emotion (colour) and intention (shape)"},
    )
    schema.write_manifest(uri, manifest)
    return manifest
