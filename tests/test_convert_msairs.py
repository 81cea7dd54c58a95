"""MSAIRS converter: ``scan`` only, on the hand-written fixture."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ray_sticker.data.convert.base import ConvertOptions, FormatError, Scan, SeededSplit, Source, get_converter
from ray_sticker.data.convert.msairs import INTENTS
from ray_sticker.data.convert.runner import assign_splits
from tests.releases.msairs import FIXTURES, MISSING_STICKER, RECORDS


def _scan(root: Path | str) -> Scan:
    return get_converter("msairs").scan(Source(str(root)), ConvertOptions())


@pytest.fixture
def release(tmp_path: Path) -> Path:
    FIXTURES["msairs"](tmp_path)
    return tmp_path


def _rewrite(root: Path, i: int, **changes) -> None:
    records = json.loads((root / "all_data.json").read_text(encoding="utf-8"))
    records[i].update(changes)
    (root / "all_data.json").write_text(json.dumps(records, ensure_ascii=False, indent=4), encoding="utf-8")


def test_rows_match_expected(tmp_path):
    expected = FIXTURES["msairs"](tmp_path)
    scan = _scan(tmp_path)
    assert scan.task == "classify" and scan.label_maps == expected.label_maps
    assert scan.seeded_split == SeededSplit({"train": 0.9, "test": 0.1}, group_by="sticker_id")
    assert all(e["split"] is None for e in scan.examples)
    assign_splits(scan.examples, scan.seeded_split, ConvertOptions().seed)
    assert dict(Counter(e["split"] for e in scan.examples)) == expected.splits
    train = [e for e in scan.examples if e["split"] == "train"]
    for label, names in scan.label_maps.items():
        assert {e[label] for e in train} == set(range(len(names)))  # every class present in train
    test_stickers = {e["sticker_id"] for e in scan.examples if e["split"] == "test"}
    assert not test_stickers & {e["sticker_id"] for e in train}  # sticker-disjoint
    assert len(scan.stickers) == expected.stickers
    assert sum(s["image_ref"] == expected.missing_image for s in scan.stickers) == expected.missing_skips["stickers"]
    lost = sum(e["sticker_id"] == MISSING_STICKER for e in scan.examples)  # dropped with their sticker
    assert lost == sum(e["image_ref"] == expected.missing_image for e in scan.examples) == expected.missing_skips["examples"]
    ids = [e["example_id"] for e in scan.examples]
    assert ids == [str(r["id"]) for r in RECORDS]


def test_record_fields_and_codes(release):
    scan = _scan(release)
    assert "all_data.json" in scan.version
    assert scan.examples[0] == {
        "example_id": "0", "split": None, "language": "zh", "context": ["相信自己，明天会更好"],
        "image_ref": "all_sticker/123.png", "sticker_id": "123", "sticker_text": "字0",
        "sentiment": 1, "intent": INTENTS.index("Complain"),  # code 0 neutral -> index 1
        "text_sentiment": 2, "sticker_sentiment": 1, "sticker_class": 0,  # code 1 positive -> 2
    }
    by_id = {e["example_id"]: e for e in scan.examples}
    assert by_id["1"]["context"] == ["这", "可是", "我连抖音都上不了啊"]  # tab-separated turns
    assert by_id["3"]["context"] == ["说啥"]  # no trailing tab
    assert by_id["2"]["sentiment"] == 0 and by_id["2"]["text_sentiment"] == 1  # 2 negative, 0 neutral
    assert by_id["27"]["intent"] == INTENTS.index("Advise")  # second record of sticker 7: intent 7 + 7
    assert by_id["1"]["sticker_text"] == ""


def test_sticker_class_55_is_nulled_and_counted(release):
    scan = _scan(release)
    assert scan.examples[5]["sticker_class"] is None
    assert scan.fixups == {"sticker_class 55 (outside 0-6) set to null": 1}
    assert all(isinstance(e["sticker_class"], int) for i, e in enumerate(scan.examples) if i != 5)


def test_stickers_table(release):
    stickers = {s["sticker_id"]: s for s in _scan(release).stickers}
    assert stickers["123"] == {"sticker_id": "123", "image_ref": "all_sticker/123.png", "ocr_text": "字0"}
    assert stickers["119"]["ocr_text"] == "加油鸭"  # the first non-empty text of its records
    assert stickers["848"]["ocr_text"] == ""
    assert stickers["1010"]["image_ref"] == "all_sticker/1010.webp"  # found by listing the folder


def test_unlisted_sticker_gets_png_and_folder_name_variant(release):
    (release / "all_sticker" / "205.png").unlink()
    (release / "all_sticker").rename(release / "all_stickers")
    scan = _scan(release)
    assert "all_stickers/" in scan.version
    refs = {s["sticker_id"]: s["image_ref"] for s in scan.stickers}
    assert refs["205"] == "all_stickers/205.png" and refs["1010"] == "all_stickers/1010.webp"


def test_missing_sticker_folder_or_file_root(release):
    with pytest.raises(FileNotFoundError, match="give the release directory"):
        _scan(release / "all_data.json")
    (release / "all_sticker").rename(release / "elsewhere")
    with pytest.raises(FileNotFoundError, match="all_sticker/ or all_stickers/"):
        _scan(release)


def test_malformed_json_names_file_and_line(release):
    text = (release / "all_data.json").read_text(encoding="utf-8").splitlines()
    text[3] = text[3].rstrip(",")  # drop a comma between two keys
    (release / "all_data.json").write_text("\n".join(text), encoding="utf-8")
    with pytest.raises(FormatError, match=r"all_data\.json:\d+: malformed JSON"):
        _scan(release)


@pytest.mark.parametrize("changes, message", [
    ({"multimodal_sentiment_label": 3}, "unknown multimodal_sentiment_label 3"),
    ({"multimodal_intent_label": "Apologise"}, "unknown multimodal_intent_label 'Apologise'"),
    ({"sticker_sentiment_label": "1"}, "unknown sticker_sentiment_label '1'"),
    ({"sticker_class": 7}, "unknown sticker_class 7"),
])
def test_unknown_label_names_file_and_record(release, changes, message):
    _rewrite(release, 12, **changes)
    with pytest.raises(FormatError, match=rf"all_data\.json \(record 12\): {message}"):
        _scan(release)


def test_missing_key_and_bad_types(release):
    records = json.loads((release / "all_data.json").read_text(encoding="utf-8"))
    del records[4]["sticker"]
    (release / "all_data.json").write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(FormatError, match=r"\(record 4\): record lacks 'sticker'"):
        _scan(release)
    (release / "all_data.json").write_text(json.dumps({"data": []}), encoding="utf-8")
    with pytest.raises(FormatError, match="expected a JSON array"):
        _scan(release)
