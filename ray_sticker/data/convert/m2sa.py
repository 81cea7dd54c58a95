"""M2SA (Thakkar et al., LREC-COLING 2024): multilingual multimodal tweet sentiment.

Layout (cleopatra-itn/M2SA-multimodal-multilingual-sentiment-analysis). The release root is the
directory the official training code calls ``data/``::

    final_dataset/<n>.<corpus>@<file>.json    JSON lines, one tweet each:
        {"tweetid": 770291372272259072, "ds_language": "es", "language": "es", "label": "neutral",
         "normalized_text": "...", "image_paths": ["<image path relative to the root>", ...]}
    final_dataset/<lang>_mt.43.RETWEET_data@train_final_label.json
        NLLB translations of the English RETWEET training tweets into 15 lower-resourced languages
    the images named by ``image_paths``

The repository's ``final_dataset.zip`` (folder ``github_dataset/``) holds the same files with
``tweetid``, ``ds_language``, ``language`` and ``label`` only; the authors send the tweets and
images on request, and the official training code reads them from each record as
``normalized_text`` and ``image_paths`` (the first image, ``"./data/" + image_paths[0]``). That
is the layout read here; the ids-only files fail naming the missing field. ``ds_language`` is the
language of the source corpus (what the official code trains and evaluates per), ``language``
the tweet's detected language; labels negative/neutral/positive. Size of the public files:
143,055 records of 21 languages in the files the official code reads, and 121,034 translations.

Choices:

- Files: every ``*.json`` in ``final_dataset/`` except the nine the official ``dsstore.py``
  does not read (:data:`UNUSED`: unlabelled test sets with null labels, a second copy of
  AngryTweets, a one-tweet Latvian file and an HCR dev file); those found are listed in
  ``Scan.extra["unused_files"]``.
- Splits follow ``dsstore.py``: a file is ``validation`` if its name after ``@`` contains
  "dev" or "valid", ``test`` if it contains "test", else ``train`` — this reproduces the
  official table for every file but two, the Latvian and Albanian corpora, which it uses whole
  as test sets (:data:`TEST_ONLY`: too small to split; lv and sq train on translations only).
  ``*_mt`` files are train only (extra column ``machine_translated``).
- A language (``ds_language``) without its own validation and test files gets them cut from its
  train rows with ``options.seed``, as the official code does: 90/5/5 when both are missing
  (``options.split_fractions`` replaces these fractions), 10% when one is. The cut is grouped
  by tweet id and not stratified by label (the official code stratifies, and re-draws per
  training seed). The rows get their splits here rather than from the runner's seeded split
  because the translations and the languages with their own files must keep theirs.
- The release combines corpora whose splits overlap. A tweet id found in several splits is
  kept in the last of train, validation, test only; the dropped rows are counted in ``fixups``
  (on the public files 5,661: 2,980 Spanish and 379 English train rows, the 2,250
  translations of 150 English test tweets, ...). The official code keeps them (its scores
  include that overlap).
  Repeats of a tweet within one split (8.6k, mostly several annotators) are kept, as there.
- ``context`` = ``[normalized_text]``; ``image_ref`` = the first of ``image_paths`` (None when
  the list is empty: the pipeline skips such rows for image models); ``language`` = the tweet's
  language as released ("UNKNOWN" included). Extra columns ``tweet_id`` (string),
  ``ds_language``, ``source_file``, ``machine_translated``.
- ``example_id`` = ``<file stem>:<line>`` (tweet ids repeat within and across files).
"""

from __future__ import annotations

import collections
import posixpath
from typing import Any

from ray_sticker.data.convert.base import (
    SENTIMENT_LABELS, ConvertOptions, Converter, FormatError, Scan, SeededSplit, Source, field_of, label_index,
    register,
)
from ray_sticker.data.convert.runner import assign_splits

FOLDER = "final_dataset"
UNUSED = frozenset({
    "36.latvian@tweet_corpus_2.json", "59.tass2018-task1@intertass-CR-test.json",
    "68.tass2019@TASS2019_country_CR_test.json", "71.tass2019@TASS2019_country_ES_test.json",
    "74.tass2019@TASS2019_country_MX_test.json", "77.tass2019@TASS2019_country_PE_test.json",
    "80.tass2019@TASS2019_country_UY_test.json", "92.AngryTweets@game_tweets.json", "93.hcr@hcr-dev.json",
})
TEST_ONLY = frozenset({"37.latvian@tweet_corpus.json", "113.twitter-15@Albanian_Twitter_sentiment.json"})
SPLITS = ("train", "validation", "test")  # a tweet in several splits stays in the last
DEFAULT_FRACTIONS = {"train": 0.9, "validation": 0.05, "test": 0.05}
ONE_MISSING = 0.1  # share of train cut for a language that lacks only one of validation/test
FIX_OVERLAP = "rows dropped: tweet also in a later split (validation/test)"


def is_translation(name: str) -> bool:
    return name.split(".", 1)[0].endswith("_mt")


def file_split(name: str) -> str:
    if is_translation(name):
        return "train"
    if name in TEST_ONLY:
        return "test"
    part = name.split("@", 1)[-1].lower()
    if "dev" in part or "valid" in part:
        return "validation"
    return "test" if "test" in part else "train"


def _row(rec: Any, name: str, no: int, where: str) -> dict[str, Any]:
    def get(key: str) -> Any:
        return field_of(rec, key, where, no)

    if isinstance(rec, dict) and "normalized_text" not in rec:
        raise FormatError(where, "record lacks 'normalized_text': the public final_dataset.zip holds tweet ids and "
                                 "labels only; the authors send the text and images on request", no)
    text, paths, tweet = get("normalized_text"), get("image_paths"), get("tweetid")
    if not isinstance(text, str):
        raise FormatError(where, f"normalized_text must be a string, got {text!r}", no)
    paths = [paths] if isinstance(paths, str) else paths
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise FormatError(where, f"image_paths must be a list of paths, got {paths!r}", no)
    if isinstance(tweet, bool) or not isinstance(tweet, (int, str)):
        raise FormatError(where, f"tweetid must be an integer or string, got {tweet!r}", no)
    return {
        "example_id": f"{posixpath.splitext(name)[0]}:{no}",
        "split": file_split(name),
        "language": get("language"),
        "context": [text],
        "image_ref": paths[0] if paths else None,
        "sentiment": label_index(get("label"), SENTIMENT_LABELS, "label", where, no),
        "tweet_id": str(tweet),
        "ds_language": str(get("ds_language")),
        "source_file": name,
        "machine_translated": is_translation(name),
    }


def cut_missing_splits(rows: list[dict[str, Any]], options: ConvertOptions) -> None:
    """Per ``ds_language`` of the original tweets, cut the validation/test it lacks from its train rows."""
    by_language: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        if not r["machine_translated"]:
            by_language[r["ds_language"]].append(r)
    for own in by_language.values():
        missing = [s for s in ("validation", "test") if all(r["split"] != s for r in own)]
        if not missing:
            continue
        if len(missing) == 2:
            fractions = options.split_fractions or DEFAULT_FRACTIONS
        else:
            fractions = {"train": 1 - ONE_MISSING, missing[0]: ONE_MISSING}
        train = [r for r in own if r["split"] == "train"]
        assign_splits(train, SeededSplit(fractions, group_by="tweet_id"), options.seed)


def drop_overlap(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep each tweet id only in the last of :data:`SPLITS` it appears in."""
    last: dict[str, int] = {}
    for r in rows:
        last[r["tweet_id"]] = max(last.get(r["tweet_id"], 0), SPLITS.index(r["split"]))
    return [r for r in rows if SPLITS.index(r["split"]) == last[r["tweet_id"]]]


@register
class M2SA(Converter):
    name = "m2sa"
    task = "classify"
    description = "M2SA multilingual tweets (text + image sentiment, 21 languages, machine translations in train)"

    def scan(self, src: Source, options: ConvertOptions) -> Scan:
        if not src.is_dir(FOLDER):
            raise FileNotFoundError(f"release at {src.uri} lacks {FOLDER}/ (give the directory the official "
                                    f"code calls data/)")
        names = [n for n in src.listdir(FOLDER) if n.endswith(".json")]
        rows = []
        for name in names:
            if name in UNUSED:
                continue
            rel = f"{FOLDER}/{name}"
            where = src.uri_of(rel)
            rows.extend(_row(rec, name, no, where) for no, rec in src.jsonl(rel))
        cut_missing_splits(rows, options)
        kept = drop_overlap(rows)
        unused = [n for n in names if n in UNUSED]
        return Scan(name=self.name, task=self.task, label_maps={"sentiment": SENTIMENT_LABELS}, examples=kept,
                    version=f"M2SA {FOLDER}/ JSON lines with normalized_text + image_paths (official data/ layout)",
                    fixups={FIX_OVERLAP: len(rows) - len(kept)} if len(kept) < len(rows) else {},
                    extra={"unused_files": unused} if unused else {})
