"""A seeded damage fuzz over a small canonical dataset: bytes flipped in a shard or the
manifest, shards and the manifest cut short or emptied, a shard deleted, rows duplicated,
labels pushed outside the map, image bytes flipped.

Each damaged copy goes through the run's input check (``check_inputs``) and ``ray-sticker
check`` (which reads every row through training's own preprocessing). Each case must end
``refused`` (a one-line error of the kinds the command line reports, exit 2), ``counted``
(accepted, and ``check`` reports what training would skip or what disagrees) or ``absorbed``
(accepted and clean: allowed only for damage that can leave the data meaning something, such
as a flipped byte inside a text). Never a crash, and never ``absorbed`` for damage that loses
or invents rows."""

from __future__ import annotations

import collections
import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_sticker.check import check_dataset
from ray_sticker.config import ConfigError, load_config
from ray_sticker.data import schema
from ray_sticker.data.pipeline import DataQualityError
from ray_sticker.data.synthetic import make_classify_dataset
from ray_sticker.train.inputs import check_inputs

REFUSALS = (ConfigError, schema.SchemaError, FileNotFoundError, DataQualityError)
MUST_BE_SEEN = {"shard cut", "shard emptied", "shard deleted", "rows duplicated", "labels outside the map",
                "manifest cut"}


def _shard(root: Path, rng: random.Random) -> Path:
    return rng.choice(sorted((root / "examples").rglob("*.parquet")))


def _flip(path: Path, rng: random.Random, count: int) -> None:
    data = bytearray(path.read_bytes())
    for _ in range(count):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def _rewrite(path: Path, change) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def _set(table: pa.Table, name: str, values: list, type_) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, type_))


def _labels_outside(table: pa.Table, rng: random.Random) -> pa.Table:
    labels = table["sentiment"].to_pylist()
    labels[rng.randrange(len(labels))] = rng.choice([-1, 3, 99])
    return _set(table, "sentiment", labels, pa.int32())


def _images_flipped(table: pa.Table, rng: random.Random) -> pa.Table:
    images = table["image"].to_pylist()
    i = rng.randrange(len(images))
    data = bytearray(images[i])
    for _ in range(8):
        data[rng.randrange(len(data))] ^= 0xFF
    images[i] = bytes(data)
    return _set(table, "image", images, pa.binary())


DAMAGE = {
    "shard bytes flipped": lambda root, rng: _flip(_shard(root, rng), rng, rng.randint(1, 16)),
    "shard cut": lambda root, rng: (p := _shard(root, rng)).write_bytes(p.read_bytes()[: rng.randrange(p.stat().st_size)]),
    "shard emptied": lambda root, rng: _shard(root, rng).write_bytes(b""),
    "shard deleted": lambda root, rng: _shard(root, rng).unlink(),
    "rows duplicated": lambda root, rng: _rewrite(_shard(root, rng), lambda t: pa.concat_tables([t, t.slice(0, rng.randint(1, t.num_rows))])),
    "labels outside the map": lambda root, rng: _rewrite(_shard(root, rng), lambda t: _labels_outside(t, rng)),
    "image bytes flipped": lambda root, rng: _rewrite(_shard(root, rng), lambda t: _images_flipped(t, rng)),
    "manifest bytes flipped": lambda root, rng: _flip(root / schema.MANIFEST, rng, rng.randint(1, 4)),
    "manifest cut": lambda root, rng: (p := root / schema.MANIFEST).write_bytes(p.read_bytes()[: rng.randrange(p.stat().st_size)]),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "ds"
    make_classify_dataset(str(root), num_rows=64, image_size=32, rows_per_shard=24, seed=5)
    return root


def _outcome(root: Path) -> str:
    """refused | counted | absorbed for one damaged dataset; anything else raises."""
    try:
        check_inputs(load_config("m2sa-tiny", [f"data.uri={root}"]))
    except REFUSALS as exc:
        assert len(str(exc).splitlines()) == 1, str(exc)
        return "refused"
    report = check_dataset(str(root), ["m2sa-tiny"])
    return "absorbed" if report.clean else "counted"


def run_fuzz(pristine: Path, work: Path, seed: int, cases: int) -> dict[str, collections.Counter]:
    rng = random.Random(seed)
    counts: dict[str, collections.Counter] = {name: collections.Counter() for name in DAMAGE}
    for case in range(cases):
        name = list(DAMAGE)[case % len(DAMAGE)]
        root = work / f"case-{seed}-{case}"
        shutil.copytree(pristine, root)
        DAMAGE[name](root, rng)
        try:
            outcome = _outcome(root)
        except Exception as exc:  # noqa: BLE001 - a crash is what the harness counts
            outcome = f"crashed: {type(exc).__name__}: {str(exc)[:200]}"
        counts[name][outcome] += 1
        shutil.rmtree(root)
    return counts


def _summarise(counts: dict[str, collections.Counter], label: str) -> list[str]:
    bad = []
    for name, found in counts.items():
        crashed = {k: v for k, v in found.items() if k.startswith("crashed")}
        print(f"dataset-damage {label} | {name:24s} tried {sum(found.values()):4d}, refused {found['refused']:4d}, "
              f"counted {found['counted']:4d}, absorbed {found['absorbed']:4d}, crashed {sum(crashed.values())}")
        bad += [f"{name}: {k} (x{v})" for k, v in crashed.items()]
        if name in MUST_BE_SEEN and found["absorbed"]:
            bad.append(f"{name}: {found['absorbed']} case(s) passed as clean")
    return bad


def test_damaged_datasets_are_refused_or_counted(pristine, tmp_path):
    bad = _summarise(run_fuzz(pristine, tmp_path, seed=0, cases=2 * len(DAMAGE)), "seed 0")
    assert not bad, "\n".join(bad)


@pytest.mark.fuzz
def test_damaged_datasets_are_refused_or_counted_many_seeds(pristine, tmp_path):
    total: dict[str, collections.Counter] = {name: collections.Counter() for name in DAMAGE}
    for seed in range(1, 6):
        for name, found in run_fuzz(pristine, tmp_path, seed, cases=20 * len(DAMAGE)).items():
            total[name].update(found)
    bad = _summarise(total, "seeds 1-5")
    assert not bad, "\n".join(bad)


def test_manifest_json_stays_json_after_the_fixture(pristine):
    assert json.loads((pristine / schema.MANIFEST).read_text())["splits"]["train"] == 48
