"""SER30K converter: ``scan`` only, on the hand-written fixture."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ray_sticker.data.convert.base import ConvertOptions, FormatError, Scan, Source, get_converter
from tests.releases.ser30k import FIXTURES

ANNOTATIONS = Path("Annotations") / "image-level"


def _scan(root: Path) -> Scan:
    return get_converter("ser30k").scan(Source(str(root)), ConvertOptions())


@pytest.fixture
def release(tmp_path: Path) -> Path:
    FIXTURES["ser30k"](tmp_path)
    return tmp_path


def _rewrite(root: Path, split: str, i: int, **changes) -> None:
    path = root / ANNOTATIONS / f"{split}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["annotations"][i].update(changes)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def test_rows_match_expected(tmp_path):
    expected = FIXTURES["ser30k"](tmp_path)
    scan = _scan(tmp_path)
    assert scan.task == "classify" and scan.label_maps == expected.label_maps and not scan.stickers
    assert scan.seeded_split is None
    assert dict(Counter(e["split"] for e in scan.examples)) == expected.splits
    assert {e["emotion"] for e in scan.examples if e["split"] == "train"} == set(range(7))
    assert sum(e["image_ref"] == expected.missing_image for e in scan.examples) == expected.missing_skips["examples"]
    ids = [e["example_id"] for e in scan.examples]
    assert len(set(ids)) == len(ids)


def test_record_fields(release):
    scan = _scan(release)
    assert "Annotations/image-level" in scan.version
    assert scan.examples[0] == {
        "example_id": "train-01-panda-bear/sticker_1.jpg", "split": "train", "language": "en",
        "context": ["WHAT?!"], "image_ref": "Images/01-panda-bear/sticker_1.jpg",
        "emotion": 0, "topic": "01-panda-bear",  # anno 1 -> index 0
    }
    by_id = {e["example_id"]: e for e in scan.examples}
    assert by_id["train-cute-ghost/sticker_1.jpg"]["emotion"] == 6  # anno 7 -> the last name
    assert by_id["train-cute-ghost/sticker_2.jpg"]["context"] == [""]
    assert by_id["validation-09-panda-bear/sticker_1.jpg"]["image_ref"] == "Images/09-panda-bear/sticker_1.jpg"
    assert by_id["test-pepe-7/sticker_4.jpg"]["emotion"] == 0


def test_null_text_is_empty(release):
    _rewrite(release, "test", 0, text=None)
    assert _scan(release).examples[-2]["context"] == [""]


@pytest.mark.parametrize("anno", [0, 8, "4"])
def test_unknown_anno_names_file_and_record(release, anno):
    _rewrite(release, "val", 1, anno=anno)
    with pytest.raises(FormatError, match=rf"image-level/val\.json \(record 1\): unknown anno {anno!r}"):
        _scan(release)


def test_malformed_json_names_file_and_line(release):
    path = release / ANNOTATIONS / "test.json"
    path.write_text(path.read_text(encoding="utf-8").replace('"anno": 5,', '"anno": 5'), encoding="utf-8")
    with pytest.raises(FormatError, match=r"image-level/test\.json:\d+: malformed JSON"):
        _scan(release)


def test_missing_keys_and_files(release):
    _rewrite(release, "train", 3, text=3)
    with pytest.raises(FormatError, match=r"train\.json \(record 3\): text must be a string"):
        _scan(release)
    (release / ANNOTATIONS / "train.json").write_text(json.dumps({"images": []}), encoding="utf-8")
    with pytest.raises(FormatError, match=r"train\.json: record lacks 'annotations'"):
        _scan(release)
    FIXTURES["ser30k"](release)
    (release / ANNOTATIONS / "val.json").unlink()
    with pytest.raises(FileNotFoundError, match="lacks Annotations/image-level/val.json"):
        _scan(release)
