"""The ``ray-sticker`` command line, in-process (nothing here starts Ray)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ray_sticker import cli
from ray_sticker.config import list_configs
from ray_sticker.data.schema import read_manifest
from ray_sticker.models.registry import list_models


def _no_training(*args, **kwargs):
    raise AssertionError("the command must fail validation before any run starts")


def _exit_code(argv: list[str]) -> int:
    """The exit status of ``ray-sticker argv``: a usage error (argparse) or a returned code."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def test_models_lists_every_registry_name(capsys):
    assert cli.main(["-q", "models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["name", "arch", "task"]
    listed = [line.split()[0] for line in lines[2:]]
    assert listed == list_models()
    assert any(line.split()[:3] == ["m2sa-tiny", "m2sa", "classify"] for line in lines)


def test_configs_lists_shipped_configs(capsys):
    assert cli.main(["-q", "configs"]) == 0
    assert capsys.readouterr().out.split() == list_configs()


def test_configs_prints_one_resolved_with_overrides(capsys):
    assert cli.main(["-q", "configs", "m2sa-tiny", "train.epochs=7", "deepspeed.zero_stage=3"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7" in out
    data = yaml.safe_load(out)
    assert data["name"] == "m2sa-tiny"
    assert data["train"]["epochs"] == 7 and data["deepspeed"]["zero_stage"] == 3
    assert data["model"]["name"] == "m2sa-tiny"


def test_configs_with_a_bad_override_returns_2(capsys):
    assert cli.main(["-q", "configs", "m2sa-tiny", "train.epochs=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.epochs" in err


def test_train_with_invalid_value_fails_before_ray(capsys, monkeypatch):
    import ray_sticker.train.trainer as trainer

    monkeypatch.setattr(trainer, "run_many", _no_training)
    assert cli.main(["-q", "train", "--config", "m2sa-tiny", "deepspeed.zero_stage=5"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: config 'm2sa-tiny': deepspeed.zero_stage:")
    assert "(got 5)" in lines[0]
    assert captured.out == ""


def test_train_with_unknown_config_returns_2(capsys, monkeypatch):
    import ray_sticker.train.trainer as trainer

    monkeypatch.setattr(trainer, "run_many", _no_training)
    assert cli.main(["-q", "train", "--config", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown config 'nope'" in err and "m2sa-tiny" in err
    # The embedded demo validates every one of its configs with the overrides first.
    assert cli.main(["-q", "train", "train.epoch=3"]) == 2
    assert "unknown field 'train.epoch'" in capsys.readouterr().err


def test_prepare_synthetic_writes_a_readable_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli.main(["-q", "prepare", "synthetic", "--out", str(out), "--rows", "80", "--image-size", "16",
                     "--seed", "3", "--rows-per-shard", "20"]) == 0
    manifest = read_manifest(str(out))
    assert manifest.splits == {"train": 60, "validation": 10, "test": 10}
    assert manifest.extra["image_size"] == 16 and manifest.extra["seed"] == 3
    assert len(list((out / "examples" / "train").glob("*.parquet"))) == 3
    assert f"wrote {out}" in capsys.readouterr().out


def test_prepare_rejects_unknown_format_and_task(tmp_path, capsys):
    assert cli.main(["-q", "prepare", "nosuchformat", "--out", str(tmp_path / "x")]) == 2
    assert "unknown dataset format 'nosuchformat'; available: synthetic, dstc10-mod" in capsys.readouterr().err
    assert _exit_code(["-q", "prepare", "synthetic", "--task", "rank", "--out", str(tmp_path / "y")]) == 2
    assert "invalid choice: 'rank'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_prepare_synthetic_selection(tmp_path, capsys):
    assert cli.main(["-q", "prepare", "synthetic", "--task", "select", "--rows", "40", "--out", str(tmp_path / "s")]) == 0
    assert "'emotion'" in capsys.readouterr().out
    assert (tmp_path / "s" / "manifest.json").exists() and (tmp_path / "s" / "stickers").is_dir()


@pytest.mark.parametrize(
    "command, options",
    [
        ("train", ["--config", "--address", "section.field=value", "ray-sticker configs"]),
        ("prepare", ["format", "--out", "--rows", "--seed", "--image-size", "--rows-per-shard", "--corrupt-fraction",
                     "--task"]),
        ("evaluate", [("--model", "--export"), "--data", "--split", "--batch-size", "--address"]),
        ("models", ["--params"]),
        ("configs", ["name", "section.field=value"]),
    ],
)
def test_subcommand_help(command, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ray-sticker {command}")
    for option in options:
        alternatives = option if isinstance(option, tuple) else (option,)
        assert any(a in out for a in alternatives), option


def test_missing_or_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_format_table():
    from ray_sticker.console import format_table

    text = format_table([{"a": "x", "b": 0.5}, {"a": "longer", "b": None}], [("A", "a", ""), ("B", "b", ".2f")])
    assert text.splitlines() == ["A       B   ", "------  ----", "x       0.50", "longer      "]


def test_console_script_models():
    script = Path(sys.executable).parent / "ray-sticker"
    assert script.exists()
    proc = subprocess.run([str(script), "-q", "models"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in list_models():
        assert name in proc.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        # A mistyped path: the config's synthetic default stands in only where its file points.
        ([], "`ray-sticker prepare synthetic --out "),
        (["data.synthetic_if_missing=false"], "no dataset at"),
        (["data.image_size=48"], "data.image_size=48 but model 'm2sa-tiny' takes 32 px images"),
        (["model.name=nope"], "model.name: unknown model; registered:"),
    ],
)
def test_train_with_unusable_dataset_or_model_is_one_line_before_ray(tmp_path, capsys, monkeypatch, overrides,
                                                                    message):
    """Checked before Ray starts: a missing dataset, an image size the model cannot take, an unknown model."""
    from ray_sticker.train import trainer

    monkeypatch.setattr(trainer, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    args = ["-q", "train", "--config", "m2sa-tiny", f"data.uri={tmp_path / 'missing'}", *overrides]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "missing").exists()  # nothing written in the user's name
