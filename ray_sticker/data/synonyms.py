"""Synonym replacement for text augmentation (MDSE: "we use synonym replacement for text
augmentation"), as EDA (Wei & Zou, 2019) defines it: replace ``n = max(1, int(alpha * words))``
distinct words that are not stop words and have synonyms, each (every occurrence of it) by one
of its synonyms drawn at random. As EDA is used, the augmented texts are made ahead of
training: the pipeline tokenizes ``variants`` replaced copies of each train row beside the
original (seeded by (seed, example id, variant)), and each epoch the worker trains on one of
them per row, drawn from its (seed, epoch, rank) generator (train/batches.py).

Where the synonyms come from (``data.synonyms``, local or s3://):

- WordNet (what EDA reads through nltk): the ``dict/`` directory of the WordNet 3.0 release,
  or ``corpora/wordnet.zip`` (or its unzipped directory) as ``python -m nltk.downloader -d DIR
  wordnet`` writes it. Its ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv`` are
  read; a word's synonyms are the other words of every synset it is in;
- a JSON file ``{"word": ["synonym", ...], ...}``;
- ``builtin:synthetic``: the synthetic dataset's cue words, each with its class's other cues
  (test size).
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from dataclasses import dataclass

import numpy as np

from ray_sticker import storage

WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
BUILTIN_SYNTHETIC = "builtin:synthetic"
# EDA's stop words: never replaced.
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her
hers herself it its itself they them their theirs themselves what which who whom this that these
those am is are was were be been being have has had having do does did doing a an the and but if or
because as until while of at by for with about against between into through during before after
above below to from up down in out on off over under again further then once here there when where
why how all any both each few more most other some such no nor not only own same so than too very s
t can will just don should now
""".split())
_WORD = re.compile(r"^(\W*)(.*?)(\W*)$")  # leading punctuation, the word, trailing punctuation


@dataclass(frozen=True)
class SynonymSpec:
    """Synonym replacement of the train split (``data.synonym_replacement`` > 0)."""

    uri: str  # data.synonyms
    alpha: float  # data.synonym_replacement: EDA's alpha_sr
    variants: int  # data.synonym_variants: replaced copies per row


@functools.lru_cache(maxsize=4)
def load_synonyms(uri: str) -> dict[str, tuple[str, ...]]:
    """Word -> its synonyms (lower case, sorted) from ``uri`` (see the module doc); once per process."""
    if uri == BUILTIN_SYNTHETIC:
        from ray_sticker.data.synthetic import NEGATIVE, NEUTRAL, POSITIVE

        table = {w: tuple(sorted(set(group) - {w})) for group in (POSITIVE, NEGATIVE, NEUTRAL) for w in group}
    elif storage.isdir(uri):
        found = {name: storage.join(uri, name) for name in WORDNET_FILES if storage.exists(storage.join(uri, name))}
        table = _from_wordnet(found, uri)
    elif uri.endswith(".zip") and storage.exists(uri):
        table = _from_wordnet_zip(uri)
    elif storage.exists(uri):
        table = _from_json(uri)
    else:
        raise FileNotFoundError(f"data.synonyms: nothing at {uri} (a WordNet database directory, a JSON file of "
                                f"synonyms, or {BUILTIN_SYNTHETIC}; WordNet: python -m nltk.downloader -d DIR wordnet)")
    if not table:
        raise ValueError(f"data.synonyms: {uri} holds no synonyms")
    return table


def _from_json(uri: str) -> dict[str, tuple[str, ...]]:
    try:
        data = json.loads(storage.read_bytes(uri))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"data.synonyms: {uri} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                             for v in data.values()):
        raise ValueError(f"data.synonyms: {uri} must map each word to a list of synonyms")
    return {k.lower(): tuple(sorted({s.lower() for s in v} - {k.lower()})) for k, v in data.items() if v}


def _from_wordnet_zip(uri: str) -> dict[str, tuple[str, ...]]:
    import io
    import zipfile

    try:
        archive = zipfile.ZipFile(io.BytesIO(storage.read_bytes(uri)))
    except zipfile.BadZipFile as exc:
        raise ValueError(f"data.synonyms: {uri}: {exc}") from None
    members = {m.rsplit("/", 1)[-1]: m for m in archive.namelist()}
    found = {name: members[name] for name in WORDNET_FILES if name in members}
    return _from_wordnet(found, uri, lambda member: archive.read(member))


def _from_wordnet(found: dict[str, str], uri: str, read=storage.read_bytes) -> dict[str, tuple[str, ...]]:
    """Synonyms from WordNet's data files (name -> where ``read`` finds it)."""
    if not found:
        raise FileNotFoundError(f"data.synonyms: {uri} holds none of WordNet's {', '.join(WORDNET_FILES)}")
    synonyms: dict[str, set[str]] = {}
    for name, where in found.items():
        for number, line in enumerate(read(where).decode("utf-8", errors="replace").splitlines(), 1):
            if not line or line.startswith("  "):  # the licence header
                continue
            words = _synset_words(line, f"{uri}: {name}:{number}")
            for w in words:
                synonyms.setdefault(w, set()).update(words - {w})
    return {w: tuple(sorted(s)) for w, s in synonyms.items() if s}


def _synset_words(line: str, where: str) -> set[str]:
    """The words of one line of a WordNet data file: ``offset lex_filenum ss_type w_cnt
    word lex_id [word lex_id ...] ...`` (w_cnt in hex; an adjective may carry a marker such
    as ``(a)``; ``_`` joins the words of a collocation)."""
    fields = line.split()
    try:
        count = int(fields[3], 16)
        words, lex_ids, pointers = fields[4:4 + 2 * count:2], fields[5:5 + 2 * count:2], fields[4 + 2 * count]
        int(pointers)  # p_cnt follows the words: a wrong w_cnt lands elsewhere
        [int(i, 16) for i in lex_ids]
    except (IndexError, ValueError):
        raise ValueError(f"data.synonyms: {where} is not a WordNet data line: {line[:60]!r}") from None
    return {re.sub(r"\(\w+\)$", "", w).replace("_", " ").lower() for w in words}


def replace_synonyms(text: str, table: dict[str, tuple[str, ...]], alpha: float, rng: np.random.Generator) -> str:
    """EDA's synonym replacement of one text (see the module doc). Words are split on white space;
    a word's punctuation stays, and it is looked up in lower case."""
    words = text.split()
    if not words:
        return text
    parts = [_WORD.match(w).groups() for w in words]
    replaceable = sorted({core.lower() for _, core, _ in parts if core.lower() in table
                          and core.lower() not in STOP_WORDS})
    rng.shuffle(replaceable)
    chosen = {w: table[w][int(rng.integers(len(table[w])))] for w in replaceable[:max(1, int(alpha * len(words)))]}
    if not chosen:
        return text
    return " ".join(f"{lead}{chosen.get(core.lower(), core)}{trail}" for lead, core, trail in parts)


def variant_seed(seed: int, example_id: str, variant: int) -> int:
    """The seed of one replaced copy of one row: the same whichever task or block preprocesses it."""
    return (seed * 1_000_003 + zlib.crc32(example_id.encode("utf-8")) * 101 + variant) % (2**63 - 1)
