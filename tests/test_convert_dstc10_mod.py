"""The DSTC10-MOD converter's scan: one sample per meme utterance, emotion labels, the meme pool,
random candidates, the task-2 test files, both layouts, and errors that name file and place."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from ray_sticker.data.convert.base import ConvertOptions, FormatError, Scan, Source, get_converter
from tests.releases import write, write_json
from tests.releases.dstc10_mod import MEMES, TRAIN, u, write_release


def scan(root: Path, **options) -> Scan:
    return get_converter("dstc10-mod").scan(Source(str(root)), ConvertOptions(**options))


@pytest.fixture
def release(tmp_path: Path) -> Path:
    write_release(tmp_path)
    return tmp_path


def by_id(s: Scan) -> dict[str, dict]:
    return {e["example_id"]: e for e in s.examples}


def test_one_sample_per_meme_utterance(release: Path):
    s = scan(release)
    assert (s.name, s.task) == ("dstc10-mod", "select")
    assert Counter(e["split"] for e in s.examples) == {"train": 5, "validation": 2, "test": 3}
    ex = by_id(s)
    assert len(ex) == len(s.examples)
    assert sorted(k for k in ex if k.startswith("train")) == [
        "train-43992-2", "train-43992-4", "train-7-1", "train-7-2", "train-7-3"]  # not the first utterance
    e = ex["train-43992-2"]
    assert e["context"] == ["可以的客官拍下说一声要手动改价", "那我买两份两个地址", "客官这个是在同一地址两个地址不行哦"]
    assert e["reply_text"] == "客官这个是在同一地址两个地址不行哦"
    assert (e["sticker_id"], e["speaker_id"], e["dialogue_id"], e["turn"]) == ("2", "[speaker1]", "dialogue 43992", 2)
    assert (e["test_set"], e["release_candidates"], e["language"]) == (None, None, "zh")
    meme_only = ex["train-43992-4"]  # no text of its own: the history only
    assert meme_only["context"] == [t["txt"] for t in TRAIN["dialogue 43992"][:4]]
    assert meme_only["reply_text"] is None
    assert ex["train-7-3"]["sticker_id"] == "0"  # img id "000" is a meme like any other


def test_emotions_follow_emotion_dict(release: Path):
    s = scan(release)
    assert s.label_maps == {"emotion": ["开心", "难过", "生气"]}
    ex = by_id(s)
    assert [ex[k]["emotion"] for k in ("train-43992-2", "train-43992-4", "train-7-1", "train-7-2", "train-7-3")] == \
        [1, 2, 0, None, 2]  # id 5 -> 生气 (index 2); no emotion_id -> None
    assert {ex[k]["emotion"] for k in ex if k.startswith("test")} == {None}


def test_meme_pool(release: Path):
    s = scan(release)
    assert [r["sticker_id"] for r in s.stickers] == [str(i) for i in range(len(MEMES))]
    row = s.stickers[3]
    assert row == {"sticker_id": "3", "image_ref": "meme_set/赞3.png", "set_id": None, "ocr_text": None,
                   "file_name": "赞3.png"}
    assert "未收录.jpg" not in {r["file_name"] for r in s.stickers}  # an image outside img2id.json


def test_random_candidates_from_the_whole_pool(release: Path):
    """Evaluation rows store one seeded draw; train rows none (training draws, maybe per epoch)."""
    s = scan(release, seed=5)
    pool = {r["sticker_id"] for r in s.stickers}
    evaluated = [e for e in s.examples if e["split"] != "train"]
    assert evaluated and all(e.get("candidate_ids") is None for e in s.examples if e["split"] == "train")
    for e in evaluated:
        cands = e["candidate_ids"]
        assert len(cands) == len(set(cands)) == 10
        assert cands.count(e["sticker_id"]) == 1 and set(cands) <= pool
    again, other = scan(release, seed=5), scan(release, seed=6)
    assert [e.get("candidate_ids") for e in again.examples] == [e.get("candidate_ids") for e in s.examples]
    assert [e.get("candidate_ids") for e in other.examples] != [e.get("candidate_ids") for e in s.examples]
    assert all(len(e["candidate_ids"]) == 3 for e in scan(release, num_candidates=3).examples if e["split"] != "train")


def test_task2_test_files(release: Path):
    s = scan(release)
    ex = by_id(s)
    assert sorted(k for k in ex if k.startswith("test")) == ["test-easy-0", "test-easy-1", "test-hard-0"]
    e = ex["test-easy-0"]
    assert e["context"] == ["今天冒雨上班！！！！", "哈哈～我今天休～～", "明天什么班？"]
    assert (e["sticker_id"], e["test_set"], e["reply_text"]) == ("8", "easy", "明天什么班？")
    assert e["release_candidates"] == [str(i) for i in range(1, 12)]
    assert e["dialogue_id"] is None and e["turn"] is None
    assert ex["test-hard-0"]["test_set"] == "hard" and ex["test-hard-0"]["release_candidates"] is None
    assert s.fixups == {"test records without an answer skipped": 1}


def test_without_test_files_and_other_layout(release: Path):
    """The supplementary files under supplementary/, the validation file as validation.json,
    emotion_dict.json written id -> name, no test files."""
    sup = release / "supplementary"
    sup.mkdir()
    for name in ("img2id.json", "id2feature.json", "meme_set"):
        shutil.move(release / name, sup / name)
    emotions = json.loads((release / "emotion_dict.json").read_text(encoding="utf-8"))
    write_json(sup / "emotion_dict.json", {str(i): name for name, i in emotions.items()})
    (release / "emotion_dict.json").unlink()
    (release / "c_val.json").rename(release / "validation.json")
    for name in ("c_test_easy_task2.json", "c_test_hard_task2.json"):
        (release / name).unlink()
    s = scan(release)
    assert Counter(e["split"] for e in s.examples) == {"train": 5, "validation": 2}
    assert s.label_maps == {"emotion": ["开心", "难过", "生气"]}
    assert by_id(s)["train-7-3"]["emotion"] == 2
    assert s.stickers[0]["image_ref"] == "supplementary/meme_set/哈哈0.jpg"
    assert s.fixups == {}


def test_malformed_json_names_file_and_line(tmp_path: Path):
    write_release(tmp_path)
    write(tmp_path / "c_val.json", '{\n "dialogue 1": [\n  {"speaker_id": "[speaker1]",, "txt": "x"}\n ]\n}\n')
    with pytest.raises(FormatError, match=r"c_val\.json:3: malformed JSON"):
        scan(tmp_path)


def test_unknown_emotion_names_file_and_utterance(tmp_path: Path):
    write_release(tmp_path)
    write_json(tmp_path / "c_train.json", {"dialogue 9": [u(1, "你好"), u(2, "嗯", "001", 3)]})
    with pytest.raises(FormatError, match=r"c_train\.json \(dialogue 9, utterance 1\): unknown emotion_id 3"):
        scan(tmp_path)


def test_unknown_meme_names_file_and_place(tmp_path: Path):
    write_release(tmp_path)
    write_json(tmp_path / "c_train.json", {"dialogue 9": [u(1, "你好"), u(2, "嗯", "307", 0)]})
    with pytest.raises(FormatError, match=r"c_train\.json \(dialogue 9, utterance 1\): img_id '307' is not in img2id"):
        scan(tmp_path)
    write_json(tmp_path / "c_train.json", {})
    write_json(tmp_path / "c_test_hard_task2.json", [{"history": [u(1, "在吗")], "answer": {"img_id": "abc"}}])
    with pytest.raises(FormatError, match=r"c_test_hard_task2\.json \(record 0\): img_id 'abc' is not a number"):
        scan(tmp_path)


def test_bad_supplementary_files(tmp_path: Path):
    write_release(tmp_path)
    write_json(tmp_path / "img2id.json", {"a.jpg": "001", "b.jpg": "1"})
    with pytest.raises(FormatError, match=r"img2id\.json \(entry 'b\.jpg'\): img id '1' is given to two files"):
        scan(tmp_path)
    write_release(tmp_path)
    write_json(tmp_path / "emotion_dict.json", {"开心": "zero"})
    with pytest.raises(FormatError, match=r"emotion_dict\.json: emotion ids must be integers"):
        scan(tmp_path)


@pytest.mark.s3
def test_scan_on_s3_matches_local(s3_env, s3_bucket, tmp_path: Path):
    from ray_sticker import storage

    write_release(tmp_path)
    storage.upload_dir(str(tmp_path), f"{s3_bucket}/mod")
    local, remote = scan(tmp_path), get_converter("dstc10-mod").scan(Source(f"{s3_bucket}/mod"), ConvertOptions())
    assert remote.examples == local.examples and remote.stickers == local.stickers
