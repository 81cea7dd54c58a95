"""Twitter-2015 / Twitter-2017 as TomBERT ships them: {train,dev,test}.tsv + twitterYYYY_images/.

Twitter-15 is written as one dataset's directory (TSVs at the root), Twitter-17 in the
IJCAI2019_data layout (TSVs under ``twitter2017/``). As in the real release, several targets
of one tweet share its image and ``test.tsv``'s header lacks the ``#1 Label`` column.
"""

from __future__ import annotations

from pathlib import Path

from tests.releases import Expected, jpeg, write

HEADER = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String"
TEST_HEADER = "index\t#1 ImageID\t#2 String\t#2 String"  # sic: the released test.tsv headers

# (label, image, sentence with $T$, target); labels 0 negative, 1 neutral, 2 positive
ROWS = {
    "train.tsv": [
        ("2", "1001.jpg", "RT @ fan : $T$ played a great show tonight !", "Taylor Swift"),
        ("0", "1002.jpg", "Storm warning for $T$ , stay safe", "Utah"),
        ("1", "1003.jpg", "$T$ announces upgrades to its software", "EMC"),
        ("1", "1004.jpg", "South Korea defeats $T$ and Chicago plays next !", "Japan"),
        ("2", "1004.jpg", "South Korea defeats Japan and $T$ plays next !", "Chicago"),
        ("0", "1005.jpg", "Court to censure $T$ judge over comments", "Montana"),
    ],
    "dev.tsv": [
        ("2", "2001.jpg", "Love shopping at $T$ !", "lush"),
        ("1", "2002.jpg", "Poster near $T$ , London .", "Kings Cross"),
    ],
    "test.tsv": [
        ("0", "3001.jpg", "Bicycle theft rises in $T$ .", "Japan"),
        ("2", "3002.jpg", "$T$ is always photo ready", "Cam Newton"),
    ],
}
COLOURS = {"0": (30, 40, 160), "1": (128, 128, 128), "2": (230, 200, 40)}


def _write(root: Path, tsv_dir: Path, images: str, prefix: str) -> Expected:
    for name, rows in ROWS.items():
        lines = [TEST_HEADER if name == "test.tsv" else HEADER]
        for i, (label, image, sentence, target) in enumerate(rows, start=1):
            lines.append(f"{i}\t{label}\t{prefix}{image}\t{sentence}\t{target}")
            write(root / images / f"{prefix}{image}", jpeg(COLOURS[label]))
        write(tsv_dir / name, "\n".join(lines) + "\n")
    return Expected(splits={"train": 6, "validation": 2, "test": 2},
                    label_maps={"sentiment": ["negative", "neutral", "positive"]},
                    missing_image=f"{images}/{prefix}1004.jpg", missing_skips={"examples": 2})


def write_twitter15(root: Path) -> Expected:
    return _write(root, root, "twitter2015_images", "")


def write_twitter17(root: Path) -> Expected:
    return _write(root, root / "twitter2017", "twitter2017_images", "17_06_")


FIXTURES = {"twitter15": write_twitter15, "twitter17": write_twitter17}
