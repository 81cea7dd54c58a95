"""MVSA as CLMLF's repository lays it out: the split files in a fold directory
(``10-flod-1/``), the images beside it in ``dataset_image/``, pointed at as downloaded."""

from pathlib import Path

import pytest

from ray_sticker.data.convert.base import ConvertOptions, Source, get_converter
from tests.releases.mvsa import RECORDS, write_release


def scan(root: Path, **options):
    return get_converter("mvsa-single").scan(Source(str(root)), ConvertOptions(**options))


def _train_ids(s) -> list[str]:
    return [e["example_id"] for e in s.examples if e["split"] == "train"]


def test_clmlf_layout_reads_its_default_fold_and_finds_every_image(tmp_path):
    write_release(tmp_path, folds=("10-flod-1", "10-flod-2"))
    (tmp_path / "MVSA-single_translation.json").write_text("{}")  # CLMLF's back-translations: not read
    src = Source(str(tmp_path))
    s = scan(tmp_path)
    assert len(_train_ids(s)) == len(RECORDS["train.json"]) and s.version == "CLMLF splits (10-flod-1)"
    assert [e for e in s.examples if not src.exists(e["image_ref"])] == []  # the images beside the folds
    assert len(_train_ids(scan(tmp_path, fold="10-flod-2"))) == len(RECORDS["train.json"]) - 1


def test_the_only_fold_is_read_and_unclear_folds_are_refused_by_name(tmp_path):
    only = tmp_path / "only"
    write_release(only, folds=("5-flod-3",))
    assert len(_train_ids(scan(only))) == len(RECORDS["train.json"])
    several = tmp_path / "several"
    write_release(several, folds=("5-flod-2", "5-flod-3"))
    with pytest.raises(FileNotFoundError, match="holds the folds 5-flod-2, 5-flod-3: choose one with --fold"):
        scan(several)
    with pytest.raises(FileNotFoundError, match="has no fold '9-flod-9'.*folds: 5-flod-2, 5-flod-3"):
        scan(several, fold="9-flod-9")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks train.json \(at its root or in a fold directory such as 10-flod-1/\)"):
        scan(empty)


def test_the_root_layout_still_reads(tmp_path):
    write_release(tmp_path)
    s = scan(tmp_path)
    assert len(s.examples) == sum(len(r) for r in RECORDS.values()) and s.version == "CLMLF splits"
