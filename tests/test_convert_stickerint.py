"""StickerInt converter: ``scan`` only, on the hand-written fixture."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import pytest

from ray_sticker.data.convert.base import ConvertOptions, FormatError, Scan, Source, get_converter
from ray_sticker.data.convert.stickerint import _majority, comet_relations
from tests.releases import png
from tests.releases.stickerint import COLOURS, FIXTURES, write_release

NULL_COMET = {f"comet_{r}": None for r in ("xIntent", "xNeed", "xWant", "xEffect", "xReact")}


def _scan(root: Path) -> Scan:
    return get_converter("stickerint").scan(Source(str(root)), ConvertOptions())


def _edit_jsonl(path: Path, no: int, drop: str | None = None, **changes) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[no - 1])
    rec.update(changes)
    rec.pop(drop, None)
    lines[no - 1] = json.dumps(rec, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


def test_rows_match_expected(tmp_path):
    expected = FIXTURES["stickerint"](tmp_path)
    scan = _scan(tmp_path)
    assert scan.task == "select" and scan.label_maps == expected.label_maps
    assert dict(Counter(e["split"] for e in scan.examples)) == expected.splits
    assert len(scan.stickers) == expected.stickers
    ids = [e["example_id"] for e in scan.examples]
    assert len(set(ids)) == len(ids)
    pool = {s["sticker_id"] for s in scan.stickers}
    assert len(pool) == len(scan.stickers) and {e["sticker_id"] for e in scan.examples} <= pool
    assert all("candidate_ids" not in e for e in scan.examples)  # Int-RA ranks the whole pool
    train = {e["intent"] for e in scan.examples if e["split"] == "train"}
    assert train == set(range(len(scan.label_maps["intent"])))


def test_example_columns(tmp_path):
    write_release(tmp_path)
    scan = _scan(tmp_path)
    assert scan.examples[0] == {
        "example_id": "train-11-0", "split": "train", "language": "zh",
        "context": ["今天考试过了", "恭喜恭喜", "请你吃饭"], "sticker_id": "boba_101.png",
        "intent": 0,  # "Joy": matched case-insensitively; id 0 in intent_label.txt
        "comet_xIntent": "分享心情", "comet_xNeed": "有话想说", "comet_xWant": "得到回应",
        "comet_xEffect": "被回复", "comet_xReact": "开心",
        "textid": "11", "text": "今天考试过了[SEP]恭喜恭喜[SEP]请你吃饭[SEP]", "speaker": "User1",
        "style": "cartoon", "form": "reply", "coarse_intent": "positive", "intent_zh": "开心", "response": "",
        "comet": "xIntent: 分享心情 [SEP] xNeed: 有话想说 [SEP] xWant: 得到回应 [SEP] xEffect: 被回复 [SEP] xReact: 开心",
    }
    by_id = {e["example_id"]: e for e in scan.examples}
    # one example per image id; valid -> validation
    assert by_id["train-16-0"]["sticker_id"] == "boba_101.png" and by_id["train-16-1"]["sticker_id"] == "siban_202.png"
    assert [e["example_id"] for e in scan.examples if e["split"] == "validation"] == ["validation-21-0", "validation-22-0"]
    assert by_id["test-32-0"]["intent"] == 3  # curiosity


def test_label_map_in_id_order_with_texts(tmp_path):
    write_release(tmp_path)  # intent_label.txt lists ids 2, 0, 3, 1
    scan = _scan(tmp_path)
    assert scan.label_maps["intent"] == ["joy", "anger", "gratitude", "curiosity"]
    assert scan.extra["intent_texts"] == ["开心", "生气", "感谢", "好奇"]
    assert scan.version


def test_stickers_union_images_and_majority(tmp_path):
    write_release(tmp_path)
    scan = _scan(tmp_path)
    stickers = {s["sticker_id"]: s for s in scan.stickers}
    assert set(stickers) == set(COLOURS)  # siban_203 only in test_imgs.tsv, siban_209 used by nobody
    assert all(s["image"] == png(COLOURS[k]) for k, s in stickers.items())
    assert stickers["boba_101.png"]["intent"] == 0  # joy, joy, anger
    assert stickers["siban_202.png"]["intent"] == 1  # anger, anger, gratitude
    assert [stickers["siban_202.png"][f"desc_{a}"] for a in ("gesture", "posture", "facial", "verbal")] == \
        ["摊手", "站立", "无奈", "好吧"]  # its own keyword twice, boba_101's once (conversation 16)
    assert stickers["siban_209.png"]["intent"] is None and stickers["siban_209.png"]["desc_verbal"] is None
    assert stickers["siban_203.png"]["set_id"] is None and stickers["siban_203.png"]["ocr_text"] is None
    assert scan.fixups == {"stickers whose examples disagree on fined_intent (majority kept)": 2,
                           "stickers whose examples disagree on keyword (majority kept)": 1}


def test_majority_ties_go_to_first_seen():
    assert _majority([2, 1]) == (2, True)
    assert _majority([2, 1, 1]) == (1, True)
    assert _majority([("a",), ("a",)]) == (("a",), False)


def test_comet_relations():
    assert comet_relations("xIntent：想聊天; xNeed=朋友 | xreact 开心") == {
        "comet_xIntent": "想聊天", "comet_xNeed": "朋友", "comet_xReact": "开心"}
    assert comet_relations("想要表达感谢") == {}


def test_comet_without_relation_names_or_absent(tmp_path):
    write_release(tmp_path)
    _edit_jsonl(tmp_path / "train_contexts_total_key.jsonl", 1, comet="想要分享快乐")
    _edit_jsonl(tmp_path / "train_contexts_total_key.jsonl", 2, comet=None)
    scan = _scan(tmp_path)
    first, second = scan.examples[0], scan.examples[1]
    assert {k: first[k] for k in NULL_COMET} == NULL_COMET and first["comet"] == "想要分享快乐"
    assert {k: second[k] for k in NULL_COMET} == NULL_COMET and second["comet"] is None
    assert scan.fixups["comet without relation names (comet_* left empty)"] == 1
    _edit_jsonl(tmp_path / "train_contexts_total_key.jsonl", 2, comet={"xIntent": "x"})
    with pytest.raises(FormatError, match=r"train_contexts_total_key\.jsonl:2: 'comet' must be a string"):
        _scan(tmp_path)


def test_repeated_textid_and_unknown_sticker(tmp_path):
    write_release(tmp_path)
    _edit_jsonl(tmp_path / "test_contexts_total_key.jsonl", 2, textid=31)
    _edit_jsonl(tmp_path / "valid_contexts_total_key.jsonl", 1, image_ids=["gone.png", "boba_102.png"])
    scan = _scan(tmp_path)
    ids = [e["example_id"] for e in scan.examples]
    assert "test-31-0" in ids and "test-31-L2-0" in ids
    # A sticker in no imgs.tsv stays referenced: the runner skips the example and reports it.
    assert {"validation-21-0", "validation-21-1"} <= set(ids)
    assert "gone.png" not in {s["sticker_id"] for s in scan.stickers}
    assert scan.fixups["textid repeated in a file (line number appended to example_id)"] == 1


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    write_release(tmp_path)
    _append(tmp_path / "valid_contexts_total_key.jsonl", '{"textid": 23, "text": ')
    with pytest.raises(FormatError, match=r"valid_contexts_total_key\.jsonl:3: malformed JSON line"):
        _scan(tmp_path)


def test_unknown_intent_names_file_and_line(tmp_path):
    write_release(tmp_path)
    _edit_jsonl(tmp_path / "train_contexts_total_key.jsonl", 4, fined_intent="Boredom")
    with pytest.raises(FormatError, match=r"train_contexts_total_key\.jsonl:4: unknown fined_intent 'boredom'"):
        _scan(tmp_path)


@pytest.mark.parametrize("changes, drop, message", [
    ({"keyword": "举手,跳起来,大笑"}, None, "'keyword' must be 4 comma-separated"),
    ({"image_ids": "boba_103.png"}, None, "'image_ids' must be a list of ids"),
    ({"text": ["生日快乐"]}, None, "'text' must be a string"),
    ({}, "fined_intent", "record lacks 'fined_intent'"),
])
def test_record_field_errors(tmp_path, changes, drop, message):
    write_release(tmp_path)
    _edit_jsonl(tmp_path / "test_contexts_total_key.jsonl", 2, drop=drop, **changes)
    with pytest.raises(FormatError, match=r"test_contexts_total_key\.jsonl:2: " + message):
        _scan(tmp_path)


def test_imgs_tsv_lines(tmp_path):
    write_release(tmp_path)
    imgs = tmp_path / "valid_imgs.tsv"
    _append(imgs, "bad_1.png")
    with pytest.raises(FormatError, match=r"valid_imgs\.tsv:3: expected 'image_id<TAB>base64', got 1 field"):
        _scan(tmp_path)
    write_release(tmp_path)
    _append(imgs, "bad_1.png\tnot base64 at all!")
    with pytest.raises(FormatError, match=r"valid_imgs\.tsv:3: invalid base64 for sticker 'bad_1.png'"):
        _scan(tmp_path)
    write_release(tmp_path)
    data = b"\xfb\xff\xfe not an image"
    urlsafe = base64.urlsafe_b64encode(data).decode()
    assert "-" in urlsafe or "_" in urlsafe
    _append(imgs, f"broken.png\t{urlsafe}")
    stickers = {s["sticker_id"]: s for s in _scan(tmp_path).stickers}
    assert stickers["broken.png"]["image"] == data  # passed on; the runner skips and counts it


def test_sticker_listed_again_with_other_bytes(tmp_path):
    write_release(tmp_path)
    _append(tmp_path / "test_imgs.tsv", f"boba_101.png\t{base64.b64encode(png((1, 2, 3))).decode()}")
    scan = _scan(tmp_path)
    assert {s["sticker_id"]: s["image"] for s in scan.stickers}["boba_101.png"] == png(COLOURS["boba_101.png"])
    assert scan.fixups["sticker id listed again with other image bytes (first kept)"] == 1


def test_intent_label_file_errors(tmp_path):
    write_release(tmp_path)
    _append(tmp_path / "intent_label.txt", "4\tsurprise")
    with pytest.raises(FormatError, match=r"intent_label\.txt:5: expected 'id<TAB>intent<TAB>text'"):
        _scan(tmp_path)
    write_release(tmp_path)
    _append(tmp_path / "intent_label.txt", "4\tJoy\t高兴")
    with pytest.raises(FormatError, match=r"intent_label\.txt:5: intent id or name listed twice"):
        _scan(tmp_path)
