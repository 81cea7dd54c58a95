"""Checkpoint integrity manifests and the choice of checkpoint on resume (no Ray cluster)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ray_sticker.train import checkpoints as ckpt


def _write_checkpoint(run_dir: Path, epoch: int, world: int = 2, config: str = "{}") -> Path:
    """A checkpoint as Ray Train merges it: every rank's files plus its manifest."""
    directory = run_dir / ckpt.checkpoint_dir_name(epoch)
    for rank in range(world):
        rank_dir = run_dir / f".rank{rank}-{epoch}"
        (rank_dir / "state").mkdir(parents=True)
        (rank_dir / "state" / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(bytes([epoch, rank]) * 100)
        if rank == 0:
            (rank_dir / "config.json").write_text(config)
        ckpt.write_manifest(str(rank_dir), rank, world, epoch)
        for path in rank_dir.rglob("*"):
            if path.is_file():
                target = directory / path.relative_to(rank_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                path.replace(target)
    return directory


def test_a_complete_checkpoint_verifies(tmp_path):
    directory = _write_checkpoint(tmp_path, 0)
    assert ckpt.verify(str(directory)) is None
    assert ckpt.world_size_of(str(directory)) == 2


@pytest.mark.parametrize("damage, message", [
    (lambda d: os.remove(d / ckpt.INTEGRITY_DIR / "rank-00001.json"), "no files from rank(s) [1] of 2"),
    (lambda d: os.remove(d / "state" / "zero_pp_rank_1_optim_states.pt"), "zero_pp_rank_1_optim_states.pt of rank 1 is missing"),
    (lambda d: (d / "state" / "zero_pp_rank_0_optim_states.pt").write_bytes(b"cut"), "has 3 bytes, 200 were written"),
    (lambda d: (d / "state" / "zero_pp_rank_0_optim_states.pt").write_bytes(b"\xff" * 200), "SHA-256 differs"),
    (lambda d: (d / ckpt.INTEGRITY_DIR / "rank-00000.json").write_text("{"), "unreadable manifest"),
    (lambda d: [os.remove(p) for p in (d / ckpt.INTEGRITY_DIR).iterdir()], "no integrity manifest"),
])
def test_incomplete_or_altered_checkpoints_are_named(tmp_path, damage, message):
    directory = _write_checkpoint(tmp_path, 0)
    damage(directory)
    problem = ckpt.verify(str(directory))
    assert problem is not None and message in problem, problem


def test_contents_are_hashed_only_for_the_ranks_asked(tmp_path):
    directory = _write_checkpoint(tmp_path, 0)
    (directory / "state" / "zero_pp_rank_1_optim_states.pt").write_bytes(b"\x00" * 200)
    assert ckpt.verify(str(directory), hash_ranks={0}) is None  # rank 1 checks its own files
    assert "SHA-256" in ckpt.verify(str(directory), hash_ranks={0, 1})


def test_restore_skips_broken_checkpoints_newest_first(tmp_path, caplog):
    from ray.train import Checkpoint

    for epoch in range(3):
        _write_checkpoint(tmp_path, epoch)
    (tmp_path / "epoch-0002" / "state" / "zero_pp_rank_0_optim_states.pt").write_bytes(b"x" * 200)
    os.remove(tmp_path / "epoch-0001" / ckpt.INTEGRITY_DIR / "rank-00001.json")
    (tmp_path / "metrics.json").write_text("[]")  # other files of the run directory are ignored
    loaded, votes = [], []

    def agree(ok: bool) -> bool:
        votes.append(ok)
        return ok

    caplog.set_level("WARNING", logger="ray_sticker.train")
    name = ckpt.restore(Checkpoint(str(tmp_path / "epoch-0002")), str(tmp_path), loaded.append, agree)
    assert name == "epoch-0000" and loaded == [str(tmp_path / "epoch-0000")]
    assert votes == [False, False, True]
    warnings = [r.getMessage() for r in caplog.records]
    assert any("skipping checkpoint epoch-0002" in w and "SHA-256" in w for w in warnings), warnings
    assert any("skipping checkpoint epoch-0001" in w and "rank(s) [1]" in w for w in warnings), warnings


def test_restore_with_nothing_usable_starts_over(tmp_path, caplog):
    _write_checkpoint(tmp_path, 0)
    os.remove(tmp_path / "epoch-0000" / ckpt.INTEGRITY_DIR / "rank-00000.json")
    caplog.set_level("WARNING", logger="ray_sticker.train")
    assert ckpt.restore(None, str(tmp_path), lambda d: pytest.fail("loaded a broken checkpoint"), lambda ok: ok) is None
    assert "training starts from the beginning" in caplog.text
    assert ckpt.restore(None, str(tmp_path / "no-such-run"), lambda d: None, lambda ok: ok) is None


def test_a_rank_that_disagrees_makes_every_rank_skip(tmp_path):
    """Rank 1 found the checkpoint broken: rank 0, which found it fine, must not load it."""
    _write_checkpoint(tmp_path, 0)
    loaded = []
    assert ckpt.restore(None, str(tmp_path), loaded.append, lambda ok: False) is None and loaded == []


def test_evaluating_a_broken_checkpoint_names_the_problem(tmp_path):
    from ray_sticker.train.export import load_model

    directory = _write_checkpoint(tmp_path, 0, config='{"architecture": {"arch": "m2sa"}, "experiment": {}}')
    os.remove(directory / "state" / "zero_pp_rank_1_optim_states.pt")
    with pytest.raises(ValueError, match="epoch-0000 cannot be used: file state/zero_pp_rank_1"):
        load_model(str(directory))


def test_a_run_config_keeps_the_order_of_the_heads(tmp_path):
    """The heads' order is part of a model: the first head's metrics get the short names and an
    MLLM's prompt and answer list the heads in it. An export must not sort them."""
    import json

    from ray_sticker.config import load_config
    from ray_sticker.train.export import CONFIG, write_run_config

    heads = {"sentiment": 3, "intent": 20}
    write_run_config(str(tmp_path), load_config("mllm-tiny"), {"arch": "mllm", "heads": heads},
                     {"sentiment": ["neutral", "positive", "negative"], "intent": [str(i) for i in range(20)]})
    meta = json.loads((tmp_path / CONFIG).read_text())
    assert list(meta["architecture"]["heads"]) == ["sentiment", "intent"]
    assert list(meta["label_maps"]) == ["sentiment", "intent"]
