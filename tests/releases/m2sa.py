"""M2SA as the official training code reads it (its data/ directory): final_dataset/<file>.json,
JSON lines with normalized_text and image_paths, and the images those paths name."""

from __future__ import annotations

from pathlib import Path

from tests.releases import Expected, jpeg, write, write_jsonl

COLOURS = {"negative": (30, 40, 160), "neutral": (128, 128, 128), "positive": (230, 200, 40)}


def tweet(tid: int, ds: str, label: str | None, text: str, images: int = 1, language: str | None = None) -> dict:
    return {"tweetid": tid, "ds_language": ds, "language": language or ds, "label": label,
            "normalized_text": text, "image_paths": [f"images/{tid}_{k}.jpg" for k in range(images)]}


LEAK = 1236289649737371648  # an English test tweet also in the English train file and in a translation
FILES = {
    "43.RETWEET_data@train_final_label.json": [
        tweet(1222618809162444800, "en", "negative", "worst airline ever"),
        tweet(1179631197405642753, "en", "positive", "loving the new season", images=2),
        tweet(1224257729478266880, "en", "neutral", "bus leaves at nine", images=0),  # no image
        tweet(LEAK, "en", "negative", "train delayed again"),
        tweet(1185829640256012288, "en", "positive", "great match today", language="UNKNOWN"),
    ],
    "42.RETWEET_data@test_gold.json": [
        tweet(LEAK, "en", "negative", "train delayed again"),
        tweet(1233925225697488901, "en", "positive", "so proud of you"),
        tweet(1223070645967294465, "en", "neutral", "meeting at noon"),
    ],
    "127.2017_English_final@twitter-2013dev-A.json": [
        tweet(264183816548130816, "en", "positive", "gas by my house hit 3.39"),
        tweet(263405084770172928, "en", "negative", "not going to the game"),
    ],
    "116.twitter-15@German_Twitter_sentiment.json": [  # no dev/test file: cut 90/5/5
        tweet(568000000000000000 + i, "de", ("negative", "neutral", "positive")[i % 3], f"tweet nummer {i}")
        for i in range(19)
    ] + [tweet(568000000000000003, "de", "negative", "tweet nummer 3")],  # a second annotator
    "26.deft2015@T1.json": [  # with a test file but no dev file: 10% cut
        tweet(589000000000000000 + i, "fr", ("positive", "negative")[i % 2], f"le tweet {i}") for i in range(5)
    ],
    "27.deft2015@Test-T1.json": [
        tweet(589000000000000100, "fr", "neutral", "un autre tweet"),
        tweet(589000000000000101, "fr", "positive", "super"),
    ],
    "hr_mt.43.RETWEET_data@train_final_label.json": [
        tweet(1222618809162444800, "hr", "negative", "najgora aviokompanija ikad"),
        tweet(1179631197405642753, "hr", "positive", "volim novu sezonu", images=2),
        tweet(LEAK, "hr", "negative", "vlak opet kasni"),
    ],
    "37.latvian@tweet_corpus.json": [  # used whole as the Latvian test set
        tweet(401635152327372800, "lv", "positive", "labs rīts", language="et"),
        tweet(401635152327372801, "lv", "negative", "slikti"),
    ],
    "71.tass2019@TASS2019_country_ES_test.json": [  # unlabelled, not read by the official code
        tweet(1100000000000000000, "es", None, "sin etiqueta"),
    ],
}


def write_release(root: Path) -> Expected:
    for name, records in FILES.items():
        write_jsonl(root / "final_dataset" / name, records)
        for r in records:
            for path in r["image_paths"]:
                write(root / path, jpeg(COLOURS.get(r["label"], (0, 0, 0))))
    # 42 rows read; the English train copy and the translation of LEAK are dropped (test keeps it);
    # de: 20 rows -> 18/1/1 and fr: 5 train rows -> 4/1 with seed 0 (ConvertOptions())
    return Expected(splits={"train": 4 + 18 + 4 + 2, "validation": 2 + 1 + 1, "test": 3 + 1 + 2 + 2},
                    label_maps={"sentiment": ["negative", "neutral", "positive"]},
                    missing_image="images/1222618809162444800_0.jpg", missing_skips={"examples": 2})


FIXTURES = {"m2sa": write_release}
