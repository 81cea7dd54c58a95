"""Twitter-2015 and Twitter-2017 (target-oriented multimodal sentiment) in TomBERT's TSV.

Two layouts are read, told apart by where ``train.tsv`` is (``YYYY`` = 2015 or 2017)::

    IJCAI2019_data (the archive TomBERT's README links; it holds both datasets):
        twitterYYYY/{train,dev,test}.tsv
        twitterYYYY_images/<ImageID>
    one dataset's directory:
        {train,dev,test}.tsv
        twitterYYYY_images/<ImageID>

The image directory may also carry the name TomBERT's own script uses
(``twitter15_images`` for 2015, ``twitter_subimages`` for 2017); the first of the names that
is a directory is used. A dataset directory that keeps its images beside itself (as
``IJCAI2019_data/twitter2015`` does, next to ``IJCAI2019_data/twitter2015_images``) is read
with the images of its parent directory.

Each TSV line is ``index  label  ImageID  sentence  target`` (header
``index  #1 Label  #2 ImageID  #3 String  #3 String``): the sentence holds the aspect term as
the placeholder ``$T$`` and the last field is the term itself; the label is 0 negative,
1 neutral, 2 positive (already the shared sentiment order). One example per line, so a
tweet with several targets gives several examples sharing one image. Sizes (paper):
Twitter-15 3,179/1,122/1,037; Twitter-17 3,562/1,176/1,234.

Choices:

- ``context`` = the sentence with ``$T$`` replaced by the target (the tweet as posted);
  ``sentence`` (with ``$T$``) and ``target`` are kept as extra columns, with ``image_id``,
  so a target-aware model can rebuild TomBERT's sentence/target pair. Case is kept
  (TomBERT lowercases for its uncased BERT; that is the tokenizer's business).
- The first line is taken as the header when its first field is ``index``; its other
  columns are not checked (the released ``test.tsv`` headers lack ``#1 Label``), only that
  there are at most 5 (a header run into the first example line is an error). TomBERT
  drops the first line unconditionally instead.
- A line without exactly 5 fields, without ``$T$``, with an empty ImageID, a label outside
  0/1/2 or an index already seen in the file is a :class:`FormatError` naming file and line,
  and so is a file without any example line (e.g. one cut short inside its header).
- ``example_id`` = ``<split>-<index>`` (the index restarts at 1 in every file); ``dev`` is
  ``validation``. The images directory must exist; each image is checked by the runner.
"""

from __future__ import annotations

from typing import ClassVar

from ray_sticker.data.convert.base import (
    SENTIMENT_LABELS, ConvertOptions, Converter, FormatError, Scan, Source, UniqueIds, label_index, register,
)

SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
CODES = {"0": "negative", "1": "neutral", "2": "positive"}
PLACEHOLDER = "$T$"
FIELDS = 5  # index, label, ImageID, sentence with $T$, target


class _Twitter(Converter):
    task = "classify"
    year: ClassVar[str]
    image_dirs: ClassVar[tuple[str, ...]]  # the archive's name first, then TomBERT's script's

    def scan(self, src: Source, options: ConvertOptions) -> Scan:
        archive_dir, train = f"twitter{self.year}", SPLIT_FILES["train"]
        tsv_dir = "" if src.require(train, f"{archive_dir}/{train}") == train else archive_dir
        image_root = None
        image_dir = next((d for d in self.image_dirs if src.is_dir(d)), None)
        parent = src.parent() if image_dir is None and not tsv_dir else None
        if parent is not None:  # IJCAI2019_data/twitterYYYY: the images are its siblings
            image_dir = next((d for d in self.image_dirs if parent.is_dir(d)), None)
            image_root = parent.uri if image_dir else None
        if image_dir is None:
            raise FileNotFoundError(f"release at {src.uri} lacks an image directory "
                                    f"({' or '.join(d + '/' for d in self.image_dirs)}), and so does its parent")
        examples = []
        for split, name in SPLIT_FILES.items():
            rel = f"{tsv_dir}/{name}" if tsv_dir else name
            examples += _read_tsv(src, src.require(rel), split, image_dir)
        layout = "IJCAI2019_data layout" if tsv_dir else "dataset directory"
        where = f"../{image_dir}/" if image_root else f"{image_dir}/"
        return Scan(name=self.name, task=self.task, label_maps={"sentiment": SENTIMENT_LABELS},
                    examples=examples, version=f"TomBERT TSV, {layout}, images in {where}", image_root=image_root)


def _clip(line: str, n: int = 80) -> str:
    return line if len(line) <= n else line[:n] + "…"


def _read_tsv(src: Source, rel: str, split: str, image_dir: str) -> list[dict]:
    """The examples of one split's TSV file."""
    where, examples, indexes, last = src.uri_of(rel), [], UniqueIds("index"), 1
    for i, (no, fields) in enumerate(src.tsv(rel)):
        last = no
        line = "\t".join(fields)
        if i == 0 and fields[0].strip() == "index":
            if len(fields) > FIELDS:
                raise FormatError(where, f"header of {len(fields)} fields, expected at most {FIELDS}: {_clip(line)!r}",
                                  no)
            continue  # header
        if len(fields) != FIELDS:
            raise FormatError(where, f"expected {FIELDS} tab-separated fields (index, label, ImageID, "
                                     f"sentence, target), got {len(fields)}: {line!r}", no)
        index, label, image_id, sentence, target = (f.strip() for f in fields)
        if PLACEHOLDER not in sentence:
            raise FormatError(where, f"sentence lacks the target placeholder {PLACEHOLDER}: {sentence!r}", no)
        if not image_id:
            raise FormatError(where, "empty ImageID", no)
        indexes.add(index, where, no)
        examples.append({
            "example_id": f"{split}-{index}",
            "split": split,
            "language": "en",
            "context": [sentence.replace(PLACEHOLDER, target)],
            "image_ref": f"{image_dir}/{image_id}",
            "sentiment": label_index(label, SENTIMENT_LABELS, "label", where, no, codes=CODES),
            "target": target,
            "sentence": sentence,
            "image_id": image_id,
        })
    if not examples:
        raise FormatError(where, "no example line (an empty file, or one cut short in its header?)", last)
    return examples


@register
class Twitter15(_Twitter):
    name = "twitter15"
    description = "Twitter-2015 target-oriented tweet sentiment (image + text), TomBERT TSV"
    year = "2015"
    image_dirs = ("twitter2015_images", "twitter15_images")


@register
class Twitter17(_Twitter):
    name = "twitter17"
    description = "Twitter-2017 target-oriented tweet sentiment (image + text), TomBERT TSV"
    year = "2017"
    image_dirs = ("twitter2017_images", "twitter_subimages")
