import pytest

from ray_sticker.config import ConfigError, ExperimentConfig, apply_overrides, list_configs, load_config, parse_override
from ray_sticker.models.registry import get_model_config, list_models
from ray_sticker.train.trainer import model_image_size, text_inputs


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


def test_yaml_path_and_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_STICKER_HOME", str(tmp_path))
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ndata:\n  uri: ${RAY_STICKER_HOME}/ds\ntrain:\n  storage_path: ~/runs\n")
    cfg = load_config(str(path)).resolved()
    assert cfg.data.uri == f"{tmp_path}/ds"
    assert not cfg.train.storage_path.startswith("~")
    round_trip = ExperimentConfig.model_validate(cfg.to_dict())
    assert round_trip == cfg
