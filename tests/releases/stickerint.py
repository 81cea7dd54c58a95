"""StickerInt in the files Int-RA's loader reads: {split}_contexts_total_key.jsonl,
{split}_imgs.tsv (image_id<TAB>base64) and intent_label.txt (id<TAB>intent<TAB>text).

The sticker images are base64 inside the TSVs, so there is no image file to delete
(``missing_image`` is empty). The pool is spread over the three imgs files with overlaps
(one sticker only in ``test_imgs.tsv``, one that no conversation uses). Conversation 16 is
answered by two stickers and carries one keyword (boba_101's), so stickers are answered
with differing values: boba_101 with intents joy, joy, anger (-> joy); siban_202 with
intents anger, anger, gratitude (-> anger) and twice its own keyword against boba_101's once.
"""

from __future__ import annotations

import base64
from pathlib import Path

from tests.releases import Expected, png, write, write_jsonl

INTENTS = [("2", "gratitude", "感谢"), ("0", "joy", "开心"), ("3", "curiosity", "好奇"), ("1", "anger", "生气")]
COLOURS = {
    "boba_101.png": (230, 200, 40), "boba_102.png": (200, 30, 30), "boba_103.png": (40, 160, 60),
    "siban_201.png": (30, 40, 160), "siban_202.png": (120, 60, 160), "siban_203.png": (20, 180, 180),
    "siban_209.png": (90, 90, 90),
}
IMGS = {
    "train": ["boba_101.png", "boba_102.png", "boba_103.png", "siban_201.png", "siban_202.png", "siban_209.png"],
    "valid": ["boba_102.png", "siban_202.png"],
    "test": ["boba_103.png", "siban_203.png"],
}
KEYWORDS = {  # gesture,posture,facial,verbal (the MLLM's descriptions, one per sticker)
    "boba_101.png": "举手欢呼,跳起来,大笑,太棒了",
    "boba_102.png": "握拳,叉腰,皱眉,气死了",
    "boba_103.png": "鞠躬,弯腰,微笑,谢谢",
    "siban_201.png": "挠头,歪头,疑惑,为什么",
    "siban_202.png": "摊手,站立,无奈,好吧",
    "siban_203.png": "指向前方,前倾,好奇,什么",
}
COMET = "xIntent: 分享心情 [SEP] xNeed: 有话想说 [SEP] xWant: 得到回应 [SEP] xEffect: 被回复 [SEP] xReact: {}"

# (textid, turns, image_ids, fined_intent, speaker, style); the tag is cased as in the jsonl
CONVERSATIONS = {
    "train": [
        (11, ["今天考试过了", "恭喜恭喜", "请你吃饭"], ["boba_101.png"], "Joy", "User1", "cartoon"),
        (12, ["快递又丢了", "怎么又丢了"], ["boba_102.png"], "anger", "User2", "cartoon"),
        (13, ["我帮你带了咖啡", "放你桌上了"], ["boba_103.png"], "gratitude", "User3", "cartoon"),
        (14, ["你猜我在哪", "在哪呀"], ["siban_201.png"], "curiosity", "User1", "animal"),
        (15, ["周末去爬山吗", "好啊", "天气不错"], ["boba_101.png"], "joy", "User4", "cartoon"),
        (16, ["你又迟到了", "路上堵车"], ["boba_101.png", "siban_202.png"], "anger", "User2", "animal"),
        (17, ["会议改到明天了", "又改了"], ["siban_202.png"], "anger", "User4", "animal"),
    ],
    "valid": [
        (21, ["你的伞忘带了", "我给你送过去"], ["boba_102.png"], "anger", "User5", "cartoon"),
        (22, ["文件帮你打印好了"], ["siban_202.png"], "gratitude", "User3", "animal"),
    ],
    "test": [
        (31, ["生日快乐", "礼物收到了吗"], ["boba_103.png"], "gratitude", "User2", "cartoon"),
        (32, ["门口有个箱子", "谁的"], ["siban_203.png"], "curiosity", "User6", "real"),
    ],
}


def b64_png(sticker: str) -> str:
    return base64.b64encode(png(COLOURS[sticker])).decode("ascii")


def record(textid: int, turns: list[str], image_ids: list[str], intent: str, speaker: str, style: str) -> dict:
    zh = next(text for _, name, text in INTENTS if name == intent.lower())
    return {
        "textid": textid, "text": "[SEP]".join(turns) + "[SEP]", "image_ids": image_ids,
        "style": style, "form": "reply", "coarse_intent": "positive" if zh in ("开心", "感谢") else "other",
        "fined_intent": intent, "intent_zh": zh, "keyword": KEYWORDS[image_ids[0]], "speaker": speaker,
        "comet": COMET.format(zh), "response": "",
    }


def write_release(root: Path) -> Expected:
    write(root / "intent_label.txt", "".join(f"{i}\t{name}\t{text}\n" for i, name, text in INTENTS))
    for split, convs in CONVERSATIONS.items():
        write_jsonl(root / f"{split}_contexts_total_key.jsonl", [record(*c) for c in convs])
        write(root / f"{split}_imgs.tsv", "".join(f"{s}\t{b64_png(s)}\n" for s in IMGS[split]))
    return Expected(splits={"train": 8, "validation": 2, "test": 2},
                    label_maps={"intent": ["joy", "anger", "gratitude", "curiosity"]},
                    stickers=len(COLOURS))


FIXTURES = {"stickerint": write_release}
