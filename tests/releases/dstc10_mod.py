"""DSTC10-MOD (Chinese) as released: c_train.json / c_val.json dialogues, the task-2 test files,
img2id.json, emotion_dict.json, id2feature.json and the meme images in meme_set/."""

from __future__ import annotations

from pathlib import Path

from tests.releases import Expected, jpeg, png, write, write_json

EMOTIONS = {"开心": 0, "难过": 1, "生气": 5}  # ids need not be contiguous
NAMES = ["哈哈", "哭", "怒", "赞", "晚安", "谢谢", "问号", "震惊", "摸鱼", "加油"]
# file name in meme_set/ -> img id; a pool of 40 so that a missing meme drops few samples
MEMES = {f"{NAMES[i % len(NAMES)]}{i}.{'png' if i % 2 else 'jpg'}": f"{i:03d}" for i in range(40)}
EXTRA_IMAGE = "未收录.jpg"  # in meme_set/ but not in img2id.json


def u(speaker: int, txt: str | None = None, img: str | None = None, emotion: int | None = None) -> dict:
    out: dict = {"speaker_id": f"[speaker{speaker}]"}
    if emotion is not None:
        out["emotion_id"] = emotion
    if img is not None:
        out["img_id"] = img
    if txt is not None:
        out["txt"] = txt
    return out


TRAIN = {
    "dialogue 43992": [
        u(1, "可以的客官拍下说一声要手动改价", "001", 0),  # first utterance: no sample
        u(2, "那我买两份两个地址"),
        u(1, "客官这个是在同一地址两个地址不行哦", "002", 1),  # sample train-43992-2
        u(2, "我的意思是我买六袋"),
        u(1, None, "003", 5),  # meme only: sample train-43992-4
    ],
    "dialogue 7": [
        u(1, "今天冒雨上班！！！！"),
        u(2, "哈哈～我今天休～～", "004", 0),  # sample train-7-1
        u(1, "明天什么班？", "005"),  # no emotion_id: sample train-7-2 with emotion None
        u(2, "早班", "000", 5),  # img id 000: sample train-7-3
    ],
}
VAL = {
    "dialogue 101": [
        u(1, "晚上吃什么"),
        u(2, "火锅！", "006", 0),  # sample validation-101-1
        u(1, "又是火锅", "002", 1),  # sample validation-101-2
    ],
}


def task2(history: list[dict], answer: str, candidates: list[str]) -> dict:
    return {"history": history, "candidate": {"speaker_id": history[-1]["speaker_id"], "set": candidates},
            "answer": {"speaker_id": history[-1]["speaker_id"], "img_id": answer}}


TEST_EASY = [
    task2([u(1, "今天冒雨上班！！！！", "001", 5), u(2, "哈哈～我今天休～～", "007"), u(1, "明天什么班？")],
          "008", ["001", "002", "003", "004", "005", "006", "007", "008", "009", "010", "011"]),
    task2([u(1, "你好"), u(2, "你好呀")], "002", ["002", "003"]),
]
TEST_HARD = [
    task2([u(1, "在吗"), u(2, "在的")], "011", []),
    task2([u(1, "这个没有答案")], "", []),  # unlabelled: skipped and counted
]

COLOURS = [(230, 200, 40), (30, 40, 160), (200, 30, 30), (40, 160, 60), (128, 128, 128), (250, 120, 200)]


def write_release(root: Path) -> Expected:
    write_json(root / "c_train.json", TRAIN)
    write_json(root / "c_val.json", VAL)
    write_json(root / "c_test_easy_task2.json", TEST_EASY)
    write_json(root / "c_test_hard_task2.json", TEST_HARD)
    write_json(root / "emotion_dict.json", EMOTIONS)
    write_json(root / "img2id.json", MEMES)
    write_json(root / "id2feature.json", {i: [0.0] * 4 for i in MEMES.values()})
    for n, name in enumerate([*MEMES, EXTRA_IMAGE]):
        colour = COLOURS[n % len(COLOURS)]
        write(root / "meme_set" / name, png(colour) if name.endswith(".png") else jpeg(colour))
    return Expected(splits={"train": 5, "validation": 2, "test": 3},
                    label_maps={"emotion": ["开心", "难过", "生气"]},
                    stickers=len(MEMES), missing_image="meme_set/赞3.png",
                    missing_skips={"stickers": 1, "examples": _uses(root, "3")})


def _uses(root: Path, sticker_id: str) -> int:
    """Samples whose positive or stored candidates use ``sticker_id``: evaluation candidates are
    drawn from the whole pool, so this depends on the seed — it is counted at the default options."""
    from ray_sticker.data.convert.base import ConvertOptions, Source
    from ray_sticker.data.convert.dstc10_mod import DSTC10MOD

    scan = DSTC10MOD().scan(Source(str(root)), ConvertOptions())
    return sum(sticker_id == ex["sticker_id"] or sticker_id in (ex.get("candidate_ids") or []) for ex in scan.examples)


FIXTURES = {"dstc10-mod": write_release}
