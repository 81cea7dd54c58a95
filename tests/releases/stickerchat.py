"""StickerChat as the SRS release ships it: release_{train,val,test}.json (JSON lines) and
npy_stickers/<set>/<id>.npy (uint8 HWC arrays) with a per-set emoji_mapping.txt."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.releases import Expected, write, write_jsonl

BIG_SET, SMALL_SET, UNUSED_SET = "556029562811580420", "1002", "1009"
# set -> sticker ids with a .npy; the big set has more than 9 others for every positive, the
# small one needs padding with the gray sticker
SETS = {
    BIG_SET: [str(556029562811581400 + i) for i in range(12)],
    SMALL_SET: ["6001", "6002", "6003", "6004"],
    UNUSED_SET: ["9001"],
}
EMOJI_ONLY = "556029562811581499"  # in the big set's emoji_mapping.txt but without a .npy
NO_EMOJI = SETS[BIG_SET][-1]  # has a .npy but no emoji_mapping.txt line
EMOJIS = ["😀", "😂", "😭", "😡", "👍", "🙏"]


def turn(text: str, msg_id: int, from_id: int = 284336329) -> dict:
    return {"text": text, "reply_to_msg_id": None, "id": msg_id, "from_id": from_id}


def sample(set_id: str, sticker: str, *texts: str) -> dict:
    return {"context": [turn(t, 52000 + i) for i, t in enumerate(texts)],
            "current": {"from_id": 271484871, "reply_to_msg_id": None, "sticker_set_id": int(set_id),
                        "sticker_id": int(sticker), "sticker_alt": "😀"}}


RECORDS = {
    "release_train.json": [
        sample(BIG_SET, SETS[BIG_SET][0], "我 正在 用 大 套子 ， 好久 没用 了", "没 想到 还 能 上 TG"),
        sample(BIG_SET, SETS[BIG_SET][3], "今天 天气 真 好"),
        sample(SMALL_SET, "6003", "hello there friend", "哈哈 哈"),
        sample(BIG_SET, SETS[BIG_SET][7], "", "  "),
    ],
    "release_val.json": [
        sample(BIG_SET, SETS[BIG_SET][5], "晚安"),
        sample(BIG_SET, SETS[BIG_SET][1], "明天 见"),
    ],
    "release_test.json": [
        sample(SMALL_SET, "6001", "谢谢 你"),
        sample(BIG_SET, NO_EMOJI, "好 的"),
    ],
}


def sticker_array(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, size=3, dtype=np.uint8)
    return np.broadcast_to(colour, (24, 24, 3)).copy()


def write_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)


def write_release(root: Path) -> Expected:
    for name, records in RECORDS.items():
        write_jsonl(root / name, records)
    n = 0
    for set_id, ids in SETS.items():
        for sid in ids:
            write_npy(root / "npy_stickers" / set_id / f"{sid}.npy", sticker_array(n))
            n += 1
        mapped = [s for s in ids if s != NO_EMOJI] + ([EMOJI_ONLY] if set_id == BIG_SET else [])
        write(root / "npy_stickers" / set_id / "emoji_mapping.txt",
              "".join(f"{s}\t{EMOJIS[i % len(EMOJIS)]}\n" for i, s in enumerate(mapped)))
    # Stickers are found by listing the set directories, so a missing .npy is only a missing
    # image when a sample answers with it: train-3 here (no other candidate set offers it then).
    return Expected(splits={"train": 4, "validation": 2, "test": 2}, label_maps={},
                    stickers=len(SETS[BIG_SET]) + len(SETS[SMALL_SET]) + 1,  # + the gray pad
                    missing_image=f"npy_stickers/{SMALL_SET}/6003.npy",
                    missing_skips={"stickers": 1, "examples": 1})


FIXTURES = {"stickerchat": write_release}
