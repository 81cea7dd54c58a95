"""M2SA converter: ``scan`` only, on the hand-written fixture."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ray_sticker.data.convert.base import ConvertOptions, FormatError, Scan, Source, get_converter
from ray_sticker.data.convert.m2sa import FIX_OVERLAP, file_split
from tests.releases.m2sa import FIXTURES, LEAK

EN_TRAIN = "43.RETWEET_data@train_final_label"
DE = "116.twitter-15@German_Twitter_sentiment"


def _scan(root: Path, options: ConvertOptions = ConvertOptions()) -> Scan:
    return get_converter("m2sa").scan(Source(str(root)), options)


@pytest.fixture
def release(tmp_path: Path) -> Path:
    FIXTURES["m2sa"](tmp_path)
    return tmp_path


def _set_line(root: Path, name: str, no: int, line: str) -> None:
    path = root / "final_dataset" / name
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[no - 1] = line
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_rows_match_expected(tmp_path):
    expected = FIXTURES["m2sa"](tmp_path)
    scan = _scan(tmp_path)
    assert scan.task == "classify" and scan.label_maps == expected.label_maps and scan.seeded_split is None
    assert dict(Counter(e["split"] for e in scan.examples)) == expected.splits
    assert {e["sentiment"] for e in scan.examples if e["split"] == "train"} == {0, 1, 2}
    assert sum(e["image_ref"] == expected.missing_image for e in scan.examples) == expected.missing_skips["examples"]
    ids = [e["example_id"] for e in scan.examples]
    assert len(set(ids)) == len(ids)
    assert "normalized_text + image_paths" in scan.version


def test_record_fields(release):
    by_id = {e["example_id"]: e for e in _scan(release).examples}
    assert by_id[f"{EN_TRAIN}:1"] == {
        "example_id": f"{EN_TRAIN}:1", "split": "train", "language": "en", "context": ["worst airline ever"],
        "image_ref": "images/1222618809162444800_0.jpg", "sentiment": 0, "tweet_id": "1222618809162444800",
        "ds_language": "en", "source_file": f"{EN_TRAIN}.json", "machine_translated": False,
    }
    assert by_id[f"{EN_TRAIN}:2"]["image_ref"] == "images/1179631197405642753_0.jpg"  # the first of two
    assert by_id[f"{EN_TRAIN}:3"]["image_ref"] is None and by_id[f"{EN_TRAIN}:3"]["sentiment"] == 1
    assert by_id[f"{EN_TRAIN}:5"]["language"] == "UNKNOWN" and by_id[f"{EN_TRAIN}:5"]["sentiment"] == 2
    latvian = by_id["37.latvian@tweet_corpus:1"]
    assert latvian["split"] == "test" and latvian["language"] == "et" and latvian["ds_language"] == "lv"


def test_translations_go_to_train(release):
    mt = [e for e in _scan(release).examples if e["machine_translated"]]
    assert [e["example_id"] for e in mt] == [f"hr_mt.{EN_TRAIN}:1", f"hr_mt.{EN_TRAIN}:2"]
    assert all(e["split"] == "train" and e["language"] == "hr" for e in mt)
    assert mt[0]["image_ref"] == "images/1222618809162444800_0.jpg"  # the original tweet's image


def test_overlapping_tweet_kept_in_test_only(release):
    scan = _scan(release)
    leak = [e for e in scan.examples if e["tweet_id"] == str(LEAK)]
    assert [(e["example_id"], e["split"]) for e in leak] == [("42.RETWEET_data@test_gold:1", "test")]
    assert scan.fixups == {FIX_OVERLAP: 2}


def test_language_cuts(release):
    scan = _scan(release)
    splits = Counter((e["ds_language"], e["split"]) for e in scan.examples)
    assert (splits["de", "train"], splits["de", "validation"], splits["de", "test"]) == (18, 1, 1)  # 90/5/5
    assert (splits["fr", "train"], splits["fr", "validation"], splits["fr", "test"]) == (4, 1, 2)  # 10% of train
    assert (splits["en", "validation"], splits["en", "test"]) == (2, 3)  # its own files only
    repeated = [e["split"] for e in scan.examples if e["tweet_id"] == "568000000000000003"]
    assert len(repeated) == 2 and len(set(repeated)) == 1  # a repeated tweet: one split
    again = _scan(release)
    assert [e["split"] for e in again.examples] == [e["split"] for e in scan.examples]  # seeded


def test_split_fractions_option_replaces_the_90_5_5_cut(release):
    options = ConvertOptions(split_fractions={"train": 0.5, "validation": 0.25, "test": 0.25})
    splits = Counter((e["ds_language"], e["split"]) for e in _scan(release, options).examples)
    assert (splits["de", "train"], splits["de", "validation"], splits["de", "test"]) == (10, 5, 5)
    assert (splits["fr", "train"], splits["fr", "validation"]) == (4, 1)  # one split missing: still 10%


def test_unused_files_are_skipped_and_listed(release):
    scan = _scan(release)
    assert scan.extra == {"unused_files": ["71.tass2019@TASS2019_country_ES_test.json"]}
    assert not any(e["source_file"].startswith("71.") for e in scan.examples)


@pytest.mark.parametrize("name, split", [
    ("129.2017_English_final@twitter-2013train-A.json", "train"),
    ("139.2017_English_final@twitter-2016devtest-A.json", "validation"),
    ("61.tass2018-task1@intertass-ES-development-tagged.json", "validation"),
    ("7.BounTi-Turkish-Sentiment-Analysis-main@validation.json", "validation"),
    ("27.deft2015@Test-T1.json", "test"),
    ("26.deft2015@T1.json", "train"),
    ("113.twitter-15@Albanian_Twitter_sentiment.json", "test"),
    ("sq_mt.43.RETWEET_data@train_final_label.json", "train"),
])
def test_file_split_reproduces_the_official_table(name, split):
    assert file_split(name) == split


def test_ids_only_release_fails_with_advice(release):
    _set_line(release, f"{EN_TRAIN}.json", 2,
              json.dumps({"tweetid": 1179631197405642753, "ds_language": "en", "language": "en", "label": "positive"}))
    with pytest.raises(FormatError, match=rf"{EN_TRAIN}\.json:2: record lacks 'normalized_text': the public"):
        _scan(release)


def test_malformed_line_names_file_and_line(release):
    _set_line(release, "27.deft2015@Test-T1.json", 2, '{"tweetid": 589000000000000101, "label": ')
    with pytest.raises(FormatError, match=r"27\.deft2015@Test-T1\.json:2: malformed JSON line"):
        _scan(release)


@pytest.mark.parametrize("label", ["mixed", None, 2])
def test_unknown_label_names_file_and_line(release, label):
    record = {"tweetid": 1, "ds_language": "en", "language": "en", "label": label, "normalized_text": "x",
              "image_paths": []}
    _set_line(release, f"{EN_TRAIN}.json", 4, json.dumps(record))
    with pytest.raises(FormatError, match=rf"{EN_TRAIN}\.json:4: unknown label {label!r}"):
        _scan(release)


def test_bad_fields_and_layout(release):
    record = {"tweetid": 1, "ds_language": "en", "language": "en", "label": "neutral", "normalized_text": "x",
              "image_paths": [3]}
    _set_line(release, f"{DE}.json", 3, json.dumps(record))
    with pytest.raises(FormatError, match=rf"{DE}\.json:3: image_paths must be a list of paths"):
        _scan(release)
    (release / "final_dataset").rename(release / "github_dataset")
    with pytest.raises(FileNotFoundError, match="lacks final_dataset/"):
        _scan(release)
