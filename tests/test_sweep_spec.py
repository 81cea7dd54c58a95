"""Sweep definitions and outputs without Ray: the shipped sweeps validate (configs, model
fields, every model variant builds), domains and points expand as documented, bad
definitions are rejected with the field named, and the results table, best config and
plots come out of trial records."""

import math

import pyarrow.parquet as pq
import pytest
import yaml

from ray_sticker.config import ConfigError, load_config
from ray_sticker.sweep import list_sweeps, load_sweep
from ray_sticker.sweep.report import best_config_yaml, best_row, trial_row, write_outputs, write_table
from ray_sticker.sweep.runner import base_config, check_sweep
from ray_sticker.sweep.spec import POINT_KEY

SHIPPED = ["eigml", "eigml-fig5", "intra", "m2sa", "m2sa-tiny", "mdse", "mmsair"]


def _write(tmp_path, text: str, name: str = "s.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_every_model_has_a_sweep_and_all_validate():
    assert set(SHIPPED) <= set(list_sweeps())
    for name in list_sweeps():
        spec = load_sweep(name)
        check_sweep(spec, base_config(spec), data=False)  # every variant's config and model
        assert spec.num_trials() >= 4, name


def test_eigml_figure5_points():
    spec = load_sweep("eigml-fig5")
    assert spec.num_trials() == 9 and spec.search.algorithm == "grid" and spec.scheduler.type == "fifo"
    points = [(p["model.overrides.w_e"], p["model.overrides.w_i"]) for p in spec.points]
    steps = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert sorted(points) == sorted(set([(w, 0.5) for w in steps] + [(0.5, w) for w in steps]))
    assert spec.metric == "val_map" and spec.mode == "max"
    values = spec.trial_values({POINT_KEY: 0})
    cfg = load_config("eigml", [f"{k}={v}" for k, v in values.items()])
    assert {k: cfg.model.overrides[k] for k in ("w_e", "w_i")} == {"w_e": 0.0, "w_i": 0.5}
    assert cfg.model.overrides["vision.pretrained"].endswith("albef-vit-b16-128.pt")  # the config's own stays


def test_asha_sweeps_search_loss_weights_and_fusion():
    expected = {
        "eigml": {"model.overrides.w_e", "model.overrides.w_i", "model.overrides.fusion_heads", "train.lr"},
        "intra": {"model.overrides.lambda_int", "model.overrides.dim", "model.overrides.attention_heads"},
        "mmsair": {"model.overrides.loss_weights.intent", "model.overrides.attention_heads",
                   "model.overrides.dropout"},
        "mdse": {"model.overrides.macl_weight", "model.overrides.fusion_heads", "model.overrides.dropout"},
        "m2sa": {"model.overrides.dropout", "train.lr"},
    }
    for name, fields in expected.items():
        spec = load_sweep(name)
        assert fields <= set(spec.swept_fields), name
        assert spec.scheduler.type == "asha" and spec.search.algorithm == "random", name


def test_domains_points_and_trial_counts(tmp_path):
    spec = load_sweep(_write(tmp_path, """
name: t
config: m2sa-tiny
metric: val_accuracy
mode: max
points: [{train.epochs: 1}, {train.epochs: 2}]
space:
  train.lr: {grid: [0.1, 0.01, 0.001]}
  model.overrides.dropout: {uniform: [0.0, 0.5]}
  train.batch_size: {choice: [8, 16]}
search: {algorithm: random, num_samples: 2}
"""))
    assert spec.num_trials() == 2 * 3 * 2
    assert spec.swept_fields == ["train.epochs", "train.lr", "model.overrides.dropout", "train.batch_size"]
    params = {POINT_KEY: 1, "train.lr": 0.01, "model.overrides.dropout": 0.25, "train.batch_size": 8}
    assert spec.trial_values(params) == {"train.epochs": 2, "train.lr": 0.01, "model.overrides.dropout": 0.25,
                                         "train.batch_size": 8}
    reps = spec.representative_values()
    # every point with every grid value, range end and choice; not the full product
    assert len(reps) == 2 * (1 + 2 + 1 + 1)
    assert {r["train.lr"] for r in reps} == {0.1, 0.01, 0.001}
    assert {r["model.overrides.dropout"] for r in reps} == {0.0, 0.5}
    space = spec.param_space()
    assert space[POINT_KEY] == {"grid_search": [0, 1]} and space["train.lr"] == {"grid_search": [0.1, 0.01, 0.001]}


@pytest.mark.parametrize("body, message", [
    ("space: {train.lr: {uniform: [0.1, 0.01]}}", "low < high"),
    ("space: {train.lr: {loguniform: [0, 1]}}", "low > 0"),
    ("space: {train.lr: {grid: [1], choice: [2]}}", "exactly one"),
    ("space: {train.lr: 0.1}", "fixed values go in overrides"),
    ("space: {train.lr: {uniform: [0.01, 0.1]}}", "algorithm grid takes grid domains only"),
    ("space: {}", "needs a space or points"),
    ("space: {train.lr: {grid: [0.1]}}\nsearch: {algoritm: grid}", "search.algoritm: unknown field"),
])
def test_bad_definitions_name_the_field(tmp_path, body, message):
    text = f"name: t\nconfig: m2sa-tiny\nmetric: val_accuracy\nmode: max\n{body}\n"
    with pytest.raises(ConfigError, match=message):
        load_sweep(_write(tmp_path, text))


@pytest.mark.parametrize("field, value, message", [
    ("model.overrides.droput", "{grid: [0.1]}", "has no field 'droput'"),
    ("train.lrr", "{grid: [0.1]}", "unknown field 'train.lrr'"),
    ("train.lr", "{grid: [-1.0]}", "train.lr: Input should be greater than 0"),
])
def test_sweeps_that_cannot_run_are_rejected_before_start(tmp_path, field, value, message):
    spec = load_sweep(_write(tmp_path, f"name: t\nconfig: m2sa-tiny\nmetric: val_accuracy\nmode: max\n"
                                       f"space: {{{field}: {value}}}\n"))
    with pytest.raises(ConfigError, match=message):
        check_sweep(spec, base_config(spec), data=False)


def test_a_model_variant_that_does_not_build_is_rejected(tmp_path):
    spec = load_sweep(_write(tmp_path, "name: t\nconfig: eigml-tiny\nmetric: val_map\nmode: max\n"
                                       "space: {model.overrides.fusion_heads: {grid: [2, 3]}}\n"))
    with pytest.raises(ConfigError, match=r"fusion_heads.*3.*does not build.*must divide"):
        check_sweep(spec, base_config(spec), data=False)


def test_unknown_sweep_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown sweep 'nope'.*eigml-fig5"):
        load_sweep("nope")


def test_command_line_changes_apply(tmp_path):
    spec = load_sweep("m2sa-tiny", name="other", **{"search.num_samples": 3, "search.max_concurrent_trials": None})
    assert spec.name == "other" and spec.search.num_samples == 3 and spec.search.max_concurrent_trials == 1


# ---------------------------------------------------------------- outputs from trial records

def _records(spec, base, exp_dir):
    """Three finished trials (one stopped after its first epoch) and one errored."""
    def hist(accs):
        return [{"epochs_completed": i + 1, "val_accuracy": a, "train_loss": 1.0 - a} for i, a in enumerate(accs)]

    trials = [("t0", 3e-3, [0.5, 0.7, 0.8]), ("t1", 1e-8, [0.33]), ("t2", 1e-4, [0.4, 0.6, 0.65])]
    histories = {tid: hist(accs) for tid, _, accs in trials}
    rows = [trial_row(spec, base, exp_dir, tid, "TERMINATED", {"train.lr": lr},
                      {**histories[tid][-1], "samples_per_s": 10.0, "params_per_rank": [1, 2]}, histories[tid], None)
            for tid, lr, _ in trials]
    rows.append(trial_row(spec, base, exp_dir, "t3", "ERROR", {"train.lr": 1e-6}, {}, [], "RuntimeError: boom"))
    return rows, histories


def test_rows_table_best_config_and_plots(tmp_path):
    spec = load_sweep("m2sa-tiny")
    base = base_config(spec)
    exp_dir = str(tmp_path / "exp")
    rows, histories = _records(spec, base, exp_dir)
    assert [r["stopped_early"] for r in rows] == [False, True, False, False]
    assert rows[0]["best_val_accuracy"] == 0.8 and rows[0]["epochs_completed"] == 3
    assert "params_per_rank" not in rows[0] and rows[0]["run_dir"].endswith("exp/runs/t0")
    assert rows[3]["error"] == "RuntimeError: boom" and rows[3]["val_accuracy"] is None

    write_table(rows, exp_dir)
    table = pq.read_table(f"{exp_dir}/results.parquet").to_pylist()
    assert [r["trial_id"] for r in table] == ["t0", "t1", "t2", "t3"]
    assert table[1]["train.lr"] == 1e-8 and table[0]["val_accuracy"] == 0.8
    csv_lines = open(f"{exp_dir}/results.csv").read().splitlines()
    assert len(csv_lines) == 5 and "train.lr" in csv_lines[0]

    best = best_row(spec, rows)
    assert best["trial_id"] == "t0"
    text = best_config_yaml(spec, base, best)
    assert text.startswith("# Best trial of sweep 'm2sa-tiny' (t0): val_accuracy = 0.8")
    path = tmp_path / "best.yaml"
    path.write_text(text)
    cfg = load_config(str(path))
    assert cfg.train.lr == 3e-3 and cfg.train.epochs == 3 and cfg.model.name == "m2sa-tiny"
    assert yaml.safe_load(text)["data"]["uri"].startswith("${RAY_STICKER_HOME}")  # portable, unexpanded


def test_write_outputs_makes_every_file(tmp_path):
    class Trial:
        def __init__(self, trial_id, status, config, last_result):
            self.trial_id, self.status, self.config, self.last_result = trial_id, status, config, last_result

    spec = load_sweep("m2sa-tiny")
    base = base_config(spec)
    exp_dir = str(tmp_path / "exp")
    rows, histories = _records(spec, base, exp_dir)
    trials = [Trial(r["trial_id"], "TERMINATED", {"train.lr": r["train.lr"]}, histories[r["trial_id"]][-1])
              for r in rows[:3]]
    rows, best, outputs = write_outputs(spec, base, exp_dir, trials, histories)
    assert best["trial_id"] == "t0" and len(rows) == 3
    for key in ("csv", "parquet", "best", "plot:train.lr", "learning_curves"):
        assert (tmp_path / "exp" / outputs[key].rsplit("/", 1)[-1]).stat().st_size > 100, key
    assert outputs["plot:train.lr"].endswith("metric_vs_train.lr.png")
    assert math.isclose(rows[2]["val_accuracy"], 0.65)


def test_asha_scheduler_follows_the_epochs_and_rejects_a_late_grace_period(tmp_path):
    from ray_sticker.sweep.runner import _scheduler

    spec = load_sweep("m2sa-tiny")
    asha = _scheduler(spec, base_config(spec))
    assert asha._time_attr == "epochs_completed" and asha._max_t == 3  # train.epochs of the sweep
    late = load_sweep("m2sa-tiny", **{"scheduler.grace_period": 5})
    with pytest.raises(ConfigError, match="grace_period=5 exceeds max_t=3"):
        _scheduler(late, base_config(late))


def test_local_mode_trials_hold_their_ranks_cpus(monkeypatch):
    """A trial in local mode trains in its own process: it reserves the rank's CPUs, and the
    trials that fit the cluster count them."""
    import ray

    from ray_sticker.sweep.runner import _trial_resources, max_concurrent

    spec = load_sweep("m2sa-tiny", **{"resources.num_workers": 0, "resources.cpus_per_worker": 1.0})
    spec = spec.model_copy(update={"search": spec.search.model_copy(update={"max_concurrent_trials": None})})
    train = load_config("m2sa-tiny", ["train.num_workers=0", "train.cpus_per_worker=1"]).train
    assert _trial_resources(spec, train)["cpu"] == 1.0
    assert _trial_resources(spec, load_config("m2sa-tiny").train)["cpu"] == 0.0
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    assert max_concurrent(spec, base_config(spec)) == 4  # 8 // (1 for the rank + 1 for Ray Data)
