"""Twitter-15/17 (TomBERT TSV) converter: ``scan`` only, on the hand-written fixtures."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ray_sticker.data.convert.base import ConvertOptions, FormatError, Scan, Source, get_converter, list_formats
from tests.releases.twitter import FIXTURES


def _scan(name: str, root: Path) -> Scan:
    return get_converter(name).scan(Source(str(root)), ConvertOptions())


def _release(tmp_path: Path, name: str) -> Path:
    FIXTURES[name](tmp_path)
    return tmp_path


def _set_line(path: Path, no: int, line: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[no - 1] = line
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_both_formats_registered():
    assert {"twitter15", "twitter17"} <= set(list_formats())
    assert get_converter("twitter17").task == "classify"


@pytest.mark.parametrize("name", ["twitter15", "twitter17"])
def test_rows_match_expected(tmp_path, name):
    expected = FIXTURES[name](tmp_path)
    scan = _scan(name, tmp_path)
    assert scan.label_maps == expected.label_maps
    assert dict(Counter(e["split"] for e in scan.examples)) == expected.splits
    ids = [e["example_id"] for e in scan.examples]
    assert len(set(ids)) == len(ids)
    assert sum(e["image_ref"] == expected.missing_image for e in scan.examples) == expected.missing_skips["examples"]
    train = {e["sentiment"] for e in scan.examples if e["split"] == "train"}
    assert train == set(range(len(scan.label_maps["sentiment"])))  # every class present in train


def test_dataset_directory_layout(tmp_path):
    scan = _scan("twitter15", _release(tmp_path, "twitter15"))
    assert scan.name == "twitter15" and "dataset directory" in scan.version
    first = scan.examples[0]
    assert first == {
        "example_id": "train-1", "split": "train", "language": "en",
        "context": ["RT @ fan : Taylor Swift played a great show tonight !"],
        "image_ref": "twitter2015_images/1001.jpg", "sentiment": 2,  # 2 positive
        "target": "Taylor Swift", "sentence": "RT @ fan : $T$ played a great show tonight !", "image_id": "1001.jpg",
    }
    by_id = {e["example_id"]: e for e in scan.examples}
    assert by_id["train-2"]["sentiment"] == 0 and by_id["train-3"]["sentiment"] == 1  # 0 negative, 1 neutral
    # two targets of one tweet: two examples, one image
    assert by_id["train-4"]["image_ref"] == by_id["train-5"]["image_ref"]
    assert by_id["train-5"]["context"] == ["South Korea defeats Japan and Chicago plays next !"]
    assert by_id["train-5"]["target"] == "Chicago"
    # dev -> validation; the test header without '#1 Label' is still a header
    assert [e["example_id"] for e in scan.examples if e["split"] == "validation"] == ["validation-1", "validation-2"]
    assert [e["example_id"] for e in scan.examples if e["split"] == "test"] == ["test-1", "test-2"]


def test_ijcai2019_layout(tmp_path):
    scan = _scan("twitter17", _release(tmp_path, "twitter17"))
    assert "IJCAI2019_data" in scan.version
    assert scan.examples[0]["image_ref"] == "twitter2017_images/17_06_1001.jpg"
    assert scan.examples[0]["image_id"] == "17_06_1001.jpg"


def test_a_dataset_directory_of_the_archive_reads_the_images_beside_it(tmp_path):
    """--src at IJCAI2019_data/twitter2017 as downloaded: the TSVs there, the images in the
    sibling twitter2017_images/; converted without a missing image."""
    from ray_sticker.data import schema
    from ray_sticker.data.convert.runner import convert

    _release(tmp_path, "twitter17")
    scan = _scan("twitter17", tmp_path / "twitter2017")
    assert scan.image_root == str(tmp_path) and "images in ../twitter2017_images/" in scan.version
    assert scan.examples[0]["image_ref"] == "twitter2017_images/17_06_1001.jpg"
    manifest, report = convert("twitter17", str(tmp_path / "twitter2017"), str(tmp_path / "out"), in_process=True)
    assert manifest.splits == {"train": 6, "validation": 2, "test": 2} and not report.examples.skipped
    assert schema.read_manifest(str(tmp_path / "out")).splits == manifest.splits


def test_tombert_script_image_directory_name(tmp_path):
    _release(tmp_path, "twitter17")
    (tmp_path / "twitter2017_images").rename(tmp_path / "twitter_subimages")
    scan = _scan("twitter17", tmp_path)
    assert scan.examples[0]["image_ref"] == "twitter_subimages/17_06_1001.jpg"


def test_missing_image_directory_or_tsv(tmp_path):
    _release(tmp_path, "twitter15")
    (tmp_path / "twitter2015_images").rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="twitter2015_images/ or twitter15_images/"):
        _scan("twitter15", tmp_path)
    (tmp_path / "train.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="lacks train.tsv or twitter2015/train.tsv"):
        _scan("twitter15", tmp_path)


def test_wrong_field_count_names_file_and_line(tmp_path):
    _release(tmp_path, "twitter15")
    _set_line(tmp_path / "dev.tsv", 3, "2\t1\t2002.jpg\tPoster near $T$ , London .")
    with pytest.raises(FormatError, match=r"dev\.tsv:3: expected 5 tab-separated fields.*got 4.*Poster near"):
        _scan("twitter15", tmp_path)


def test_unknown_label_names_file_and_line(tmp_path):
    _release(tmp_path, "twitter17")
    _set_line(tmp_path / "twitter2017" / "train.tsv", 4, "3\t-1\t17_06_1003.jpg\t$T$ announces upgrades\tEMC")
    with pytest.raises(FormatError, match=r"twitter2017/train\.tsv:4: unknown label '-1'"):
        _scan("twitter17", tmp_path)


def test_sentence_without_placeholder_and_repeated_index(tmp_path):
    _release(tmp_path, "twitter15")
    _set_line(tmp_path / "test.tsv", 2, "1\t0\t3001.jpg\tBicycle theft rises in Japan .\tJapan")
    with pytest.raises(FormatError, match=r"test\.tsv:2: sentence lacks the target placeholder"):
        _scan("twitter15", tmp_path)
    _set_line(tmp_path / "test.tsv", 2, "2\t0\t3001.jpg\tBicycle theft rises in $T$ .\tJapan")
    with pytest.raises(FormatError, match=r"test\.tsv:3: index '2' appears twice"):
        _scan("twitter15", tmp_path)
