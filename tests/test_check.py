"""``ray-sticker check``: a clean dataset is reported clean (exit 0); a damaged one has every
kind of damage it holds reported (exit 1); no dataset is a usage error (exit 2)."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_sticker import cli
from ray_sticker.data.synthetic import make_classify_dataset
from ray_sticker.data.synthetic_select import make_select_dataset
from tests.test_images import bomb_png


def _check(capsys, *args: str) -> tuple[int, str]:
    rc = cli.main(["-q", "check", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out + err


def _rows(out: str, config: str) -> dict[str, list[str]]:
    return {m.group(1): m.group(0).split() for m in re.finditer(rf"^{config}\s+(\w+)\s+.*$", out, re.M)}


def test_a_clean_dataset_is_clean_for_every_offline_config(tmp_path, capsys):
    uri = str(tmp_path / "ds")
    make_classify_dataset(uri, num_rows=80, image_size=32, seed=3)
    rc, out = _check(capsys, uri)
    assert rc == 0 and out.rstrip().endswith(f"{uri}: clean"), out
    assert re.search(r"^examples/train\s+60\s+60\s+1\s*$", out, re.M), out
    for config in ("m2sa-tiny", "mmsair-tiny", "text-only-tiny"):
        assert _rows(out, config)["train"][2:4] == ["60", "0"], out  # 60 rows, none skipped


def _damage_classify(root: Path, cut: bool = True) -> Path:
    """Into the first train shard: an undecodable, a zero-byte and a bomb image, a label outside
    the map and an overlong text; the second train shard cut short (``cut``)."""
    shards = sorted((root / "examples" / "train").glob("*.parquet"))
    table = pq.read_table(shards[0])
    images = table["image"].to_pylist()
    images[0], images[1], images[2] = b"not an image", b"", bomb_png(8000)
    labels = table["sentiment"].to_pylist()
    labels[3] = 7
    contexts = table["context"].to_pylist()
    contexts[4] = ["word " * 500]
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    table = table.set_column(table.schema.get_field_index("sentiment"), "sentiment", pa.array(labels, pa.int32()))
    table = table.set_column(table.schema.get_field_index("context"), "context", pa.array(contexts))
    pq.write_table(table, shards[0])
    if cut:
        shards[1].write_bytes(shards[1].read_bytes()[:100])
    return shards[1]


def test_a_damaged_dataset_has_each_damage_reported(tmp_path, capsys):
    uri = tmp_path / "ds"
    make_classify_dataset(str(uri), num_rows=200, image_size=32, rows_per_shard=60, seed=3)
    cut = _damage_classify(uri)
    rc, out = _check(capsys, str(uri), "--config", "m2sa-tiny")
    assert rc == 1, out
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    expected = [
        f"examples/train: shard {cut} is not a readable Parquet file",
        "examples/train: 1 image(s) do not decode: cannot decode image",
        "examples/train: 1 image(s) do not decode: empty image bytes",
        "examples/train: 1 image(s) do not decode: over the pixel cap",
        "examples/train: 1 'sentiment' label(s) outside the label map",
        f"config m2sa-tiny: shard {cut} is not a readable Parquet file",  # it cannot train on it
    ]
    for text in expected:
        assert any(text in p for p in problems), (text, out)
    assert out.rstrip().endswith(f"{len(problems)} problem(s)")


def test_per_config_skips_and_cut_texts_are_counted(tmp_path, capsys):
    uri = tmp_path / "ds"
    make_classify_dataset(str(uri), num_rows=200, image_size=32, rows_per_shard=60, seed=3)
    _damage_classify(uri, cut=False)
    rc, out = _check(capsys, str(uri), "--config", "m2sa-tiny")
    assert rc == 1, out
    train = _rows(out, "m2sa-tiny")["train"]
    assert train[2:4] == ["150", "4"], out  # 4 of 150 rows skipped by training's own preprocessing
    assert "corrupt image 2" in out and "missing image 1" in out and "label outside the label map 1" in out
    assert train[-1] == "1", out  # the overlong text, cut at the model's max_length


def test_candidates_naming_missing_stickers_are_reported(tmp_path, capsys):
    uri = tmp_path / "sel"
    make_select_dataset(str(uri), num_rows=80, image_size=32, seed=3)
    shard = sorted((uri / "examples" / "validation").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    candidates = table["candidate_ids"].to_pylist()
    candidates[0] = [*candidates[0][:-1], "no-such-sticker"]
    pq.write_table(table.set_column(table.schema.get_field_index("candidate_ids"), "candidate_ids",
                                    pa.array(candidates)), shard)
    rc, out = _check(capsys, str(uri), "--config", "eigml-tiny")
    assert rc == 1 and "examples/validation: 1 row(s) name stickers the stickers table lacks" in out, out


def test_no_dataset_is_a_usage_error(tmp_path, capsys):
    rc, out = _check(capsys, str(tmp_path / "typo"))
    assert rc == 2 and "no dataset at" in out and "ray-sticker prepare" in out


@pytest.mark.s3
def test_a_dataset_on_s3_is_checked_alike(s3_env, s3_bucket, capsys):
    uri = f"{s3_bucket}/ds"
    make_classify_dataset(uri, num_rows=80, image_size=32, seed=3)
    rc, out = _check(capsys, uri, "--config", "m2sa-tiny")
    assert rc == 0 and out.rstrip().endswith(f"{uri}: clean"), out
    assert _rows(out, "m2sa-tiny")["validation"][2:4] == ["10", "0"], out


def test_a_paper_size_model_does_not_train_from_random_towers_unless_asked(tmp_path):
    """A paper-size config whose tower has no weights is refused before Ray starts, naming the
    tower and how to get weights; ``model.allow_random_init`` (or a -tiny config) allows it."""
    from ray_sticker.config import ConfigError, load_config
    from ray_sticker.models.registry import get_model_config
    from ray_sticker.train.inputs import check_pretrained

    cfg = load_config("eigml", ["model.overrides.vision.pretrained=null"])
    model_cfg = get_model_config("eigml", cfg.model.overrides)
    with pytest.raises(ConfigError, match=r"model 'eigml': its vision tower would train from random weights "
                                          r"\(vision.pretrained: None\); give it weights \(ALBEF's ViT: "
                                          r"`ray-sticker weights albef"):
        check_pretrained(cfg, model_cfg)
    check_pretrained(load_config("eigml", ["model.overrides.vision.pretrained=null", "model.allow_random_init=true"]),
                     model_cfg)
    check_pretrained(load_config("eigml"), get_model_config("eigml", load_config("eigml").model.overrides))
    check_pretrained(load_config("eigml-tiny"), get_model_config("eigml-tiny"))  # test size: random by design
