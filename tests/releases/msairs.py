"""MSAIRS as FakerBoom/MSAIRS-Dataset ships it: all_data.json (one JSON array) + all_sticker/<id>.png.

40 records on 20 stickers (two each) so that all 20 intents reach train under the
sticker-disjoint 90/10 split: sticker ``k`` carries intents ``k`` and ``k + 7`` (mod 20).
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from ray_sticker.data.convert.msairs import INTENTS
from tests.releases import Expected, png, write, write_json

STICKERS = ["123", "848", "370", "1525985", "1551026", "1538958", "205", "1599630", "511", "1649670",
            "1641626", "484", "1021", "119", "1676183", "597", "1010", "335", "1714608", "526"]
WEBP_STICKER = "1010"  # stored as .webp (the official loader's fallback)
MISSING_STICKER = "848"  # its image is the one the tests delete
CONTEXTS = ["相信自己，明天会更好\t", "这\t可是\t我连抖音都上不了啊\t", "嘿，你今天看起来不错\t", "说啥",
            "她太强势了\t我只能认怂\t", "考试提前了\t后天中午就考了，记得复习\t", "我闪咯\t", "谢了hxd\t"]


def record(i: int) -> dict:
    k = i % 20
    sticker = STICKERS[k]
    intent = INTENTS[k] if i < 20 else INTENTS[(k + 7) % 20]
    sentiment = i % 3  # codes: 0 neutral, 1 positive, 2 negative
    return {
        "id": i, "context": CONTEXTS[i % len(CONTEXTS)], "sticker": sticker,
        "multimodal_intent_label": intent, "multimodal_sentiment_label": sentiment,
        "text_sentiment_label": (sentiment + 1) % 3, "sticker_sentiment_label": (i // 3) % 3,
        "sticker_class": k % 7,
        # odd stickers have no text, except 119 on its second record
        "sticker_text": "加油鸭" if sticker == "119" and i >= 20 else "" if k % 2 else f"字{k}",
    }


RECORDS = [record(i) for i in range(40)]
RECORDS[5]["sticker_class"] = 55  # the release's one out-of-range class
COLOURS = [(20 + 11 * k, 200 - 9 * k, (37 * k) % 256) for k in range(20)]


def webp(colour: tuple[int, int, int], size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="WEBP")
    return buf.getvalue()


def write_release(root: Path) -> Expected:
    write_json(root / "all_data.json", RECORDS)
    for k, sticker in enumerate(STICKERS):
        if sticker == WEBP_STICKER:
            write(root / "all_sticker" / f"{sticker}.webp", webp(COLOURS[k]))
        else:
            write(root / "all_sticker" / f"{sticker}.png", png(COLOURS[k]))
    write(root / "all_sticker" / "Thumbs.db", b"not an image")
    # splits: the runner's sticker-grouped 90/10 draw with seed 0 (ConvertOptions())
    return Expected(splits={"train": 36, "test": 4}, label_maps={"sentiment": ["negative", "neutral", "positive"],
                                                                 "intent": INTENTS},
                    stickers=20, missing_image=f"all_sticker/{MISSING_STICKER}.png",
                    missing_skips={"stickers": 1, "examples": 2})


FIXTURES = {"msairs": write_release}
