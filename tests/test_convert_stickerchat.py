"""The StickerChat (SRS release) converter's scan: rows, ids, same-set candidates, gray padding,
the stickers table, and errors that name the file and line."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ray_sticker.data.convert.base import ConvertOptions, FormatError, Scan, Source, get_converter
from ray_sticker.data.convert.stickerchat import PAD_ID, detokenize
from tests.releases import write, write_jsonl
from tests.releases.stickerchat import BIG_SET, EMOJI_ONLY, NO_EMOJI, RECORDS, SETS, SMALL_SET, sample, write_release


def scan(root: Path, **options) -> Scan:
    return get_converter("stickerchat").scan(Source(str(root)), ConvertOptions(**options))


@pytest.fixture
def release(tmp_path: Path) -> Path:
    write_release(tmp_path)
    return tmp_path


def by_id(s: Scan) -> dict[str, dict]:
    return {e["example_id"]: e for e in s.examples}


def test_splits_ids_and_context(release: Path):
    s = scan(release)
    assert (s.name, s.task, s.label_maps) == ("stickerchat", "select", {})
    assert Counter(e["split"] for e in s.examples) == {"train": 4, "validation": 2, "test": 2}
    ex = by_id(s)
    assert len(ex) == len(s.examples) == 8
    assert sorted(ex) == ["test-1", "test-2", "train-1", "train-2", "train-3", "train-4",
                          "validation-1", "validation-2"]
    assert ex["train-1"]["context"] == ["我正在用大套子，好久没用了", "没想到还能上TG"]
    assert ex["train-3"]["context"] == ["hello there friend", "哈哈哈"]
    assert ex["train-4"]["context"] == [""]  # only blank turns
    assert ex["train-1"]["sticker_id"] == f"{BIG_SET}/{SETS[BIG_SET][0]}"  # the 18-digit ids stay exact
    assert ex["test-1"]["sticker_id"] == f"{SMALL_SET}/6001"
    assert ex["train-1"]["sticker_alt"] == "😀"
    assert all(e["language"] == "zh" for e in s.examples)


def test_detokenize_joins_cjk_but_keeps_ascii_words():
    assert detokenize("没 想到 还 能 上 TG") == "没想到还能上TG"
    assert detokenize("I  am   fine ，  谢谢 😀") == "I am fine，谢谢😀"
    assert detokenize("   ") == ""


def test_stickers_table(release: Path):
    s = scan(release)
    rows = {r["sticker_id"]: r for r in s.stickers}
    assert len(rows) == len(s.stickers) == len(SETS[BIG_SET]) + len(SETS[SMALL_SET]) + 1
    assert not any(k.startswith("1009/") for k in rows)  # a set no sample uses
    assert f"{BIG_SET}/{EMOJI_ONLY}" not in rows  # in emoji_mapping.txt but without a .npy
    big = rows[f"{BIG_SET}/{SETS[BIG_SET][0]}"]
    assert big == {"sticker_id": f"{BIG_SET}/{SETS[BIG_SET][0]}", "set_id": BIG_SET, "ocr_text": None,
                   "image_ref": f"npy_stickers/{BIG_SET}/{SETS[BIG_SET][0]}.npy", "emoji": "😀"}
    assert rows[f"{SMALL_SET}/6002"]["emoji"] == "😂"
    assert rows[f"{BIG_SET}/{NO_EMOJI}"]["emoji"] is None
    pad = rows[PAD_ID]
    img = Image.open(io.BytesIO(pad["image"]))
    assert (img.format, img.mode, img.size) == ("PNG", "RGB", (128, 128))
    assert np.all(np.asarray(img) == 127)
    assert "image_ref" not in pad and pad["set_id"] is None


def test_candidates_come_from_the_positive_s_set(release: Path):
    s = scan(release, seed=3)
    for e in s.examples:
        cands, positive = e["candidate_ids"], e["sticker_id"]
        set_id = positive.split("/")[0]
        assert len(cands) == 10 and cands.count(positive) == 1
        real = [c for c in cands if c != PAD_ID]
        assert len(set(real)) == len(real)
        assert all(c.split("/")[0] == set_id for c in real)
        assert e["candidates_padded"] == cands.count(PAD_ID)
    ex = by_id(s)
    assert ex["train-3"]["candidates_padded"] == 6  # four stickers in the set -> six gray pads
    assert sorted(c for c in ex["train-3"]["candidate_ids"] if c != PAD_ID) == [f"{SMALL_SET}/{i}" for i in SETS[SMALL_SET]]
    assert ex["train-1"]["candidates_padded"] == 0
    assert s.extra == {"padded_candidate_sets": 2}
    assert s.fixups == {"emoji_mapping.txt entries without a .npy left out": 1}


def test_missing_npy_is_only_used_by_the_sample_answering_with_it(tmp_path: Path):
    expected = write_release(tmp_path)
    (tmp_path / expected.missing_image).unlink()
    s = scan(tmp_path)
    lost = f"{SMALL_SET}/6003"
    assert [r["image_ref"] for r in s.stickers if r["sticker_id"] == lost] == [expected.missing_image]
    users = [e["example_id"] for e in s.examples if lost in e["candidate_ids"]]
    assert users == ["train-3"] and expected.missing_skips == {"stickers": 1, "examples": 1}
    assert by_id(s)["test-1"]["candidates_padded"] == 7


def test_candidates_are_seeded(release: Path):
    a, b, c = scan(release, seed=1), scan(release, seed=1), scan(release, seed=2)
    assert [e["candidate_ids"] for e in a.examples] == [e["candidate_ids"] for e in b.examples]
    assert [e["candidate_ids"] for e in a.examples] != [e["candidate_ids"] for e in c.examples]


def test_num_candidates_option(release: Path):
    s = scan(release, num_candidates=4)
    assert all(len(e["candidate_ids"]) == 4 for e in s.examples)
    assert PAD_ID not in {r["sticker_id"] for r in s.stickers}  # every set has three others


def test_positive_without_npy_is_kept_for_the_runner_to_count(tmp_path: Path):
    write_release(tmp_path)
    write_jsonl(tmp_path / "release_test.json", [sample(BIG_SET, EMOJI_ONLY, "你好")])
    s = scan(tmp_path)
    e = by_id(s)["test-1"]
    assert e["sticker_id"] in e["candidate_ids"]
    row = next(r for r in s.stickers if r["sticker_id"] == f"{BIG_SET}/{EMOJI_ONLY}")
    assert row["image_ref"] == f"npy_stickers/{BIG_SET}/{EMOJI_ONLY}.npy" and row["emoji"] == "🙏"


def test_malformed_line_names_file_and_line(tmp_path: Path):
    write_release(tmp_path)
    lines = (tmp_path / "release_val.json").read_text(encoding="utf-8").splitlines()
    write(tmp_path / "release_val.json", "\n".join([lines[0], '{"context": [', lines[1]]) + "\n")
    with pytest.raises(FormatError, match=r"release_val\.json:2: malformed JSON line"):
        scan(tmp_path)


def test_record_without_current_names_file_and_line(tmp_path: Path):
    write_release(tmp_path)
    write_jsonl(tmp_path / "release_test.json", [RECORDS["release_test.json"][0], {"context": []}])
    with pytest.raises(FormatError, match=r"release_test\.json:2: record lacks 'current'"):
        scan(tmp_path)


def test_malformed_emoji_mapping_names_file_and_line(tmp_path: Path):
    write_release(tmp_path)
    write(tmp_path / "npy_stickers" / SMALL_SET / "emoji_mapping.txt", "6001\t😀\n6002\n")
    with pytest.raises(FormatError, match=rf"{SMALL_SET}/emoji_mapping\.txt:2: expected 'sticker_id<TAB>emoji'"):
        scan(tmp_path)


def test_missing_split_file_is_named(tmp_path: Path):
    write_release(tmp_path)
    (tmp_path / "release_val.json").unlink()
    with pytest.raises(FileNotFoundError, match="release_val.json"):
        scan(tmp_path)


@pytest.mark.s3
def test_scan_on_s3_matches_local(s3_env, s3_bucket, tmp_path: Path):
    """Set directories are listed concurrently: on S3 too, and to the same rows."""
    from ray_sticker import storage

    write_release(tmp_path)
    storage.upload_dir(str(tmp_path), f"{s3_bucket}/stickerchat")
    local, remote = scan(tmp_path), get_converter("stickerchat").scan(Source(f"{s3_bucket}/stickerchat"), ConvertOptions())
    assert remote.examples == local.examples and remote.stickers == local.stickers and remote.fixups == local.fixups
