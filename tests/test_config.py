import pytest

from ray_sticker.config import ConfigError, ExperimentConfig, apply_overrides, list_configs, load_config, parse_override
from ray_sticker.models.registry import get_model_config, list_models
from ray_sticker.train.inputs import model_image_size, text_inputs


def test_every_shipped_config_validates_and_names_a_registered_model():
    names = list_configs()
    assert {"m2sa-tiny", "text-only-tiny", "image-only-tiny", "m2sa"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, ExperimentConfig)
        assert cfg.model.name in list_models(), name
        model_cfg = get_model_config(cfg.model.name)
        assert model_cfg.get("task", "classify") == cfg.task, name
        assert model_image_size(model_cfg) in (None, cfg.data.image_size), name
        text_inputs(cfg, model_cfg)  # every text input names an existing tower


def test_validating_configs_and_sweeps_imports_neither_torch_nor_ray():
    import subprocess
    import sys

    code = ("import sys; from ray_sticker.config import load_config; from ray_sticker.sweep import load_sweep; "
            "load_config('eigml-tiny', ['train.epochs=1']); load_sweep('eigml'); "
            "print(sorted(m for m in ('torch', 'ray', 'deepspeed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_dotted_overrides_are_typed():
    cfg = load_config("m2sa-tiny", ["train.epochs=3", "deepspeed.zero_stage=3", "data.uri=s3://b/ds",
                                    "model.overrides.dropout=0.2", "train.lr=1e-4"])
    assert cfg.train.epochs == 3 and cfg.deepspeed.zero_stage == 3
    assert cfg.data.uri == "s3://b/ds"
    assert cfg.model.overrides == {"dropout": 0.2}
    assert cfg.train.lr == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("deepspeed.zero_stage=4", "deepspeed.zero_stage: Input should be 0, 1, 2 or 3 (got 4)"),
        ("train.epochs=-1", "train.epochs: Input should be greater than or equal to 0 (got -1)"),
        ("train.optimizer=sgd", "train.optimizer: Input should be 'adamw', 'adam' or 'adafactor' (got 'sgd')"),
        ("train.epoch=3", "unknown field 'train.epoch'; allowed here: epochs,"),
        ("deepspeed.offload_param=true", "offload_param needs zero_stage 3"),
    ],
)
def test_bad_values_give_one_line_naming_field_and_allowed(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config("m2sa-tiny", [override])
    msg = str(err.value)
    assert "\n" not in msg
    assert expected in msg


def test_unknown_config_name_lists_shipped():
    with pytest.raises(ConfigError, match="unknown config 'nope'; shipped configs: .*m2sa-tiny"):
        load_config("nope")


def test_parse_override_and_apply():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=hello world") == (["a"], "hello world")
    with pytest.raises(ConfigError, match="must look like"):
        parse_override("novalue")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_synthetic_data_stands_in_only_where_the_config_file_points():
    assert load_config("m2sa-tiny").data.synthetic_if_missing  # the embedded demo
    assert not load_config("m2sa-tiny", ["data.uri=/data/my-dataset"]).data.synthetic_if_missing
    assert not load_config("m2sa-tiny", ["data={uri: /data/my-dataset}"]).data.synthetic_if_missing
    asked = ["data.uri=/tmp/synthetic", "data.synthetic_if_missing=true"]
    assert load_config("m2sa-tiny", asked).data.synthetic_if_missing  # asked for in so many words
    assert load_config("m2sa-tiny", asked[::-1]).data.synthetic_if_missing

    from ray_sticker.enrich.spec import load_enrich_config

    assert load_enrich_config("commonsense-tiny").synthetic_if_missing
    assert not load_enrich_config("commonsense-tiny", dataset="/data/mine").synthetic_if_missing
    assert not load_enrich_config("commonsense-tiny", ["dataset=/data/mine"]).synthetic_if_missing
    assert load_enrich_config("commonsense-tiny", ["synthetic_if_missing=true"], dataset="/x").synthetic_if_missing


def test_yaml_path_and_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_STICKER_HOME", str(tmp_path))
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ndata:\n  uri: ${RAY_STICKER_HOME}/ds\ntrain:\n  storage_path: ~/runs\n")
    cfg = load_config(str(path)).resolved()
    assert cfg.data.uri == f"{tmp_path}/ds"
    assert not cfg.train.storage_path.startswith("~")
    round_trip = ExperimentConfig.model_validate(cfg.to_dict())
    assert round_trip == cfg


# ---------------------------------------------------------------------------- rejected before anything starts


def test_unknown_model_names_it_and_lists_the_registry():
    with pytest.raises(ConfigError) as err:
        load_config("m2sa-tiny", ["model.name=nope"])
    msg = str(err.value)
    assert "\n" not in msg and "model.name: unknown model; registered: " in msg and "(got 'nope')" in msg
    assert all(name in msg for name in list_models())


def test_cli_train_with_unknown_model_exits_2_with_one_line(capsys, monkeypatch):
    """``ray-sticker train model.name=nope`` (the embedded demo's configs): exit code 2, one line."""
    from ray_sticker import cli
    from ray_sticker.train import trainer

    monkeypatch.setattr(trainer, "run_many", lambda *a, **k: pytest.fail("training started"))
    assert cli.main(["-q", "train", "model.name=nope"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config 'm2sa-tiny': model.name: unknown model"), captured
    assert "(got 'nope')" in lines[0] and captured.out == ""


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # DeepSpeed's CPU accelerator refuses fp16 ("Type fp16 is not supported on your device").
        (["deepspeed.precision=fp16"], "deepspeed: precision=fp16 needs train.use_gpu=true; CPU workers train in fp32"),
        # bf16 would run on CPU, but CPU workers train in fp32 (engine.resolve_precision): not silently.
        (["deepspeed.precision=bf16"], "deepspeed: precision=bf16 needs train.use_gpu=true"),
        # Stage 0 builds no ZeRO optimizer, so DeepSpeed never reads offload_optimizer.
        (["deepspeed.zero_stage=0", "deepspeed.offload_optimizer=true"],
         "deepspeed: offload_optimizer needs zero_stage 1, 2 or 3"),
        # Only the stage-3 optimizer reads offload_param.
        (["deepspeed.zero_stage=2", "deepspeed.offload_param=true"], "deepspeed: offload_param needs zero_stage 3"),
    ],
)
def test_impossible_deepspeed_combinations_are_one_line_naming_the_fields(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config("m2sa-tiny", overrides)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("config 'm2sa-tiny': ") and expected in msg, msg


@pytest.mark.parametrize(
    "overrides",
    [
        ["deepspeed.precision=auto"],  # bf16 on GPU, fp32 on CPU
        ["deepspeed.precision=fp32"],
        ["deepspeed.precision=bf16", "train.use_gpu=true"],
        ["deepspeed.precision=fp16", "train.use_gpu=true", "deepspeed.gradient_clipping=1.0"],
        # Tried on CPU workers with DeepSpeed 0.19: these train.
        ["deepspeed.zero_stage=3", "model.freeze_text=true", "model.freeze_vision=true"],
        ["deepspeed.zero_stage=3", "deepspeed.offload_optimizer=true", "deepspeed.offload_param=true",
         "train.optimizer=adafactor"],
        ["deepspeed.zero_stage=2", "deepspeed.offload_optimizer=true", "train.optimizer=adafactor",
         "train.use_gpu=true"],
    ],
)
def test_workable_combinations_are_accepted(overrides):
    cfg = load_config("m2sa-tiny", overrides)
    for item in overrides:  # every value given is the value kept (nothing rejected or rewritten)
        section, field, value = *item.split("=", 1)[0].split("."), item.split("=", 1)[1]
        kept = getattr(getattr(cfg, section), field)
        assert str(kept).lower() == value.lower(), (item, kept)

