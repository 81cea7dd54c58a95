"""Synonym replacement (MDSE's text augmentation, EDA's definition): the synonym sources
(WordNet's data files, as a directory, nltk's zip and on S3; JSON; the builtin), the replacement
itself, the copies the pipeline makes, and the worker's pick per epoch."""

import json
import zipfile

import numpy as np
import pytest
import torch

from ray_sticker.config import ConfigError, load_config
from ray_sticker.data import synthetic
from ray_sticker.data.pipeline import PreprocessSpec, preprocess_batch
from ray_sticker.data.synonyms import (BUILTIN_SYNTHETIC, SynonymSpec, load_synonyms, replace_synonyms,
                                       variant_seed)
from ray_sticker.data.text import TINY_TOKENIZER
from ray_sticker.train.batches import pick_text_copies

# WordNet 3.0's data file layout: a licence header (lines starting with two spaces), then one
# synset per line: offset lex_filenum ss_type w_cnt (hex) word lex_id ... p_cnt pointers | gloss
DATA_ADJ = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
01123148 00 a 02 good 0 beneficial 0 001 ! 01125429 a 0101 | promoting or enhancing well-being
01586752 00 s 03 great 0 outstanding 0 bully(a) 0 000 | very good; "he did a bully job"
00001740 00 a 0a a1 0 a2 0 a3 0 a4 0 a5 0 a6 0 a7 0 a8 0 a9 0 a10 0 000 | ten words: w_cnt is hex
"""
DATA_NOUN = """\
  1 This software and database is being provided to you
07526757 26 n 03 happiness 0 felicity 0 feeling_of_happiness 0 000 | state of well-being
05151061 07 n 02 good 0 goodness 0 000 | moral excellence
"""


def _wordnet_dir(root):
    root.mkdir()
    (root / "data.adj").write_text(DATA_ADJ)
    (root / "data.noun").write_text(DATA_NOUN)
    (root / "index.adj").write_text("not read\n")
    return root


def test_wordnet_directory_zip_and_s3_give_the_same_synonyms(tmp_path, s3_env, s3_bucket):
    from ray_sticker import storage

    d = _wordnet_dir(tmp_path / "dict")
    table = load_synonyms(str(d))
    assert table["good"] == ("beneficial", "goodness")  # every synset of the word, across parts of speech
    assert table["bully"] == ("great", "outstanding")  # the adjective marker "(a)" dropped
    assert table["happiness"] == ("feeling of happiness", "felicity")  # collocations: "_" -> " "
    assert len(table["a1"]) == 9  # w_cnt 0a = ten words
    assert "1" not in table and "promoting" not in table  # header and glosses are not words
    with zipfile.ZipFile(tmp_path / "wordnet.zip", "w") as z:  # nltk's corpora/wordnet.zip
        z.writestr("wordnet/data.adj", DATA_ADJ)
        z.writestr("wordnet/data.noun", DATA_NOUN)
        z.writestr("wordnet/LICENSE", "x")
    assert load_synonyms(str(tmp_path / "wordnet.zip")) == table
    storage.upload_dir(str(d), f"{s3_bucket}/wordnet")
    assert load_synonyms(f"{s3_bucket}/wordnet") == table


def test_json_builtin_and_bad_sources(tmp_path):
    path = tmp_path / "syn.json"
    path.write_text(json.dumps({"Glad": ["happy", "glad", "Pleased"], "none": []}))
    assert load_synonyms(str(path)) == {"glad": ("happy", "pleased")}
    builtin = load_synonyms(BUILTIN_SYNTHETIC)
    assert set(builtin["great"]) == set(synthetic.POSITIVE) - {"great"}
    with pytest.raises(FileNotFoundError, match="data.synonyms: nothing at .*nltk.downloader"):
        load_synonyms(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds none of WordNet's data.noun"):
        load_synonyms(str(tmp_path / "empty"))
    bad = _wordnet_dir(tmp_path / "bad")
    (bad / "data.adj").write_text(DATA_ADJ.replace("a 02 good", "a 05 good"))
    with pytest.raises(ValueError, match=r"data.adj:3 is not a WordNet data line"):
        load_synonyms(str(bad))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must map each word to a list of synonyms"):
        load_synonyms(str(tmp_path / "list.json"))


def test_replacement_follows_eda():
    table = {"great": ("superb",), "day": ("daytime",), "the": ("this",), "happy": ("glad", "joyful")}
    rng = np.random.default_rng(0)
    # alpha 0.1 of 6 words -> max(1, 0) = 1 distinct word, every occurrence of it; stop words never.
    out = replace_synonyms("The great day, the GREAT day!", table, 0.1, rng)
    assert out in ("The superb day, the superb day!", "The great daytime, the GREAT daytime!")
    assert replace_synonyms("the the the", table, 1.0, rng) == "the the the"
    assert replace_synonyms("", table, 0.5, rng) == ""
    # alpha 1: every replaceable word; punctuation kept
    assert replace_synonyms("(great) day.", table, 1.0, rng) == "(superb) daytime."
    same = [replace_synonyms("a happy day", table, 0.1, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(same)) == 1
    assert variant_seed(1, "x", 1) != variant_seed(1, "x", 2) != variant_seed(1, "y", 2)


def test_pipeline_makes_seeded_copies_and_the_worker_picks_one_per_row():
    rows = synthetic.classify_rows(24, seed=3, image_size=16)
    batch = {c: rows[c].to_numpy(zero_copy_only=False) for c in rows.column_names}
    spec = PreprocessSpec(labels=(("sentiment", 3),), tokenizer=TINY_TOKENIZER, max_text_length=20, image_size=16,
                          synonyms=SynonymSpec(BUILTIN_SYNTHETIC, 0.1, 3))
    out = preprocess_batch(batch, spec)
    ids, copies = out["input_ids"], out["synonym_input_ids"]
    assert copies.shape == (24, 3, 20) and out["synonym_attention_mask"].shape == (24, 3, 20)
    assert spec.row_bytes() == PreprocessSpec(labels=(("sentiment", 3),), tokenizer=TINY_TOKENIZER,
                                              max_text_length=20, image_size=16).row_bytes() + 3 * 16 * 20
    assert (copies != ids[:, None]).any(axis=2).all()  # every synthetic text has a cue word to replace
    # seeded per (seed, example, copy): the same whichever block a row is preprocessed in
    half = preprocess_batch({k: v[12:] for k, v in batch.items()}, spec)
    np.testing.assert_array_equal(half["synonym_input_ids"], copies[12:])
    # the worker: per row its text or one copy, from the epoch's generator; the copies leave the batch
    tb = {k: torch.as_tensor(v) for k, v in out.items() if "input_ids" in k or "attention_mask" in k}
    picked = dict(tb)
    pick_text_copies(picked, torch.Generator().manual_seed(5))
    assert set(picked) == {"input_ids", "attention_mask"}
    choice = torch.randint(0, 4, (24,), generator=torch.Generator().manual_seed(5))
    for i in range(24):
        want = tb["input_ids"][i] if choice[i] == 0 else tb["synonym_input_ids"][i, choice[i] - 1]
        assert torch.equal(picked["input_ids"][i], want)
    assert {0, 1, 2, 3} == set(choice.tolist())


def test_synonym_replacement_needs_a_source(tmp_path):
    from ray_sticker.train.inputs import check_inputs

    cfg = load_config("mdse-tiny", [f"data.uri={tmp_path / 'd'}", "data.synonyms=null"])
    with pytest.raises(ConfigError, match="data.synonym_replacement=0.1 needs data.synonyms"):
        check_inputs(cfg)
    cfg = load_config("mdse-tiny", [f"data.uri={tmp_path / 'd'}", f"data.synonyms={tmp_path / 'none.json'}"])
    with pytest.raises(FileNotFoundError, match="data.synonyms: nothing at"):
        check_inputs(cfg)
    synthetic.make_classify_dataset(str(tmp_path / "d"), num_rows=48, image_size=32)
    inputs = check_inputs(load_config("mdse-tiny", [f"data.uri={tmp_path / 'd'}"]))
    assert inputs.spec.synonyms is None and inputs.train_spec.synonyms == SynonymSpec(BUILTIN_SYNTHETIC, 0.1, 4)
