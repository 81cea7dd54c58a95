"""Workers the cluster cannot place are rejected before Ray Train starts (train/placement.py):
per-node packing, fixed vs autoscaling clusters, Ray Data's CPU, and on a real local Ray."""

import logging
import os
import threading
import time

import pytest

from ray_sticker.config import ConfigError, TrainConfig, load_config
from ray_sticker.train import placement
from ray_sticker.train.placement import Autoscaling, check_placement, fit_on_node, workers_that_fit

FIXED = Autoscaling("fixed", "test: fixed")
GROWS = Autoscaling("autoscaling", "test: autoscaler")


def _train(**fields) -> TrainConfig:
    return TrainConfig(**fields)


# ---------------------------------------------------------------------------- counting


def test_bundles_are_packed_per_node_not_by_totals():
    bundle = {"CPU": 1.0}
    nodes = [{"CPU": 1.5}, {"CPU": 1.5}]  # 3 CPUs in total, yet a worker never spans two nodes
    assert workers_that_fit(bundle, nodes) == 2
    gpu = {"CPU": 4.0, "GPU": 1.0}
    assert workers_that_fit(gpu, [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 2.0, "GPU": 4.0}, {"CPU": 64.0}]) == 2
    assert fit_on_node({"CPU": 0.1}, {"CPU": 0.3}) == 3  # fractions do not lose a worker to rounding
    assert fit_on_node({"CPU": 0.5, "GPU": 1.0}, {"CPU": 8.0}) == 0


def test_worker_bundle_follows_the_trainer():
    assert placement.worker_bundle(_train(cpus_per_worker=0.5)) == {"CPU": 0.5}
    assert placement.worker_bundle(_train(cpus_per_worker=4, use_gpu=True)) == {"CPU": 4.0, "GPU": 1.0}
    assert placement.worker_bundle(_train(worker_resources={"trainer": 1})) == {"CPU": 0.5, "trainer": 1.0}


def test_custom_resources_count_and_strict_spread_takes_one_worker_per_node():
    nodes = [{"CPU": 4.0, "trainer": 2.0}, {"CPU": 4.0, "trainer": 1.0}, {"CPU": 8.0}]
    assert workers_that_fit(placement.worker_bundle(_train(worker_resources={"trainer": 1})), nodes) == 3
    assert workers_that_fit({"CPU": 1.0}, nodes, "STRICT_SPREAD") == 3
    assert workers_that_fit({"CPU": 1.0, "trainer": 1.0}, nodes, "STRICT_SPREAD") == 2
    with pytest.raises(ConfigError, match=r"train.num_workers=3 workers of \{CPU: 0.5, trainer: 1\} each cannot"):
        check_placement(_train(num_workers=3, worker_resources={"trainer": 1}, placement_strategy="STRICT_SPREAD"),
                        nodes=nodes, scaling=FIXED)
    for bad, field in (({"CPU": 1}, "cpus_per_worker"), ({"GPU": 1}, "use_gpu")):
        with pytest.raises(ValueError, match=f"not a custom resource: set train.{field}"):
            _train(worker_resources=bad)
    with pytest.raises(ValueError, match="an amount above 0"):
        _train(worker_resources={"trainer": 0})


def test_local_storage_is_refused_where_workers_may_sit_on_several_nodes():
    two_nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    with pytest.raises(ConfigError, match=r"train.storage_path=/runs is on a node's own disk and the cluster has 2 "
                                          r"nodes.*s3:// URI, or set train.storage_shared=true"):
        placement.check_storage_reach(_train(storage_path="/runs"), nodes=two_nodes, scaling=FIXED)
    with pytest.raises(ConfigError, match=r"the cluster may add nodes \(test: autoscaler\)"):
        placement.check_storage_reach(_train(storage_path="/runs"), nodes=[{"CPU": 2.0}], scaling=GROWS)
    for train in (_train(storage_path="s3://bucket/runs"), _train(storage_path="/nfs/runs", storage_shared=True),
                  _train(storage_path="/runs", num_workers=0)):
        placement.check_storage_reach(train, nodes=two_nodes, scaling=GROWS)
    placement.check_storage_reach(_train(storage_path="/runs"), nodes=[{"CPU": 2.0}], scaling=FIXED)
    placement.check_storage_reach(_train(storage_path="/runs"), nodes=[{"CPU": 2.0}],
                                  scaling=Autoscaling("unknown", "test: unreadable"))


# ---------------------------------------------------------------------------- decisions


def test_fixed_cluster_too_small_is_rejected_naming_workers_bundle_and_nodes():
    nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 2.0}]
    with pytest.raises(ConfigError) as err:
        check_placement(_train(num_workers=4, cpus_per_worker=2, use_gpu=True), nodes=nodes, scaling=FIXED)
    msg = str(err.value)
    assert "\n" not in msg
    assert "train.num_workers=4 workers of {CPU: 2, GPU: 1} each cannot be placed" in msg
    assert "2 x {CPU: 8, GPU: 1}, 1 x {CPU: 2, GPU: 0}, room for 2 (per node)" in msg
    assert "does not autoscale (test: fixed)" in msg and "train.use_gpu=false" in msg


def test_autoscaling_cluster_only_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="ray_sticker.train"):
        fit = check_placement(_train(num_workers=8, cpus_per_worker=4, use_gpu=True),
                              nodes=[{"CPU": 4.0}], scaling=GROWS)
    assert fit == 0
    assert "do not fit yet" in caplog.text and "waiting for nodes to start (test: autoscaler)" in caplog.text


def test_autoscaling_cluster_rejects_what_no_node_type_can_hold():
    types = Autoscaling("autoscaling", "test: config", {"cpu-worker": {"CPU": 16.0}, "small-gpu": {"CPU": 2.0, "GPU": 1.0}})
    with pytest.raises(ConfigError, match=r"no node type the autoscaler can launch holds one \(cpu-worker "
                                          r"\{CPU: 16, GPU: 0\}, small-gpu \{CPU: 2, GPU: 1\}\)"):
        check_placement(_train(num_workers=2, cpus_per_worker=4, use_gpu=True), nodes=[{"CPU": 2.0}], scaling=types)
    # A node type that holds one worker: more nodes can come, so only a warning.
    assert check_placement(_train(num_workers=2, cpus_per_worker=2, use_gpu=True), nodes=[{"CPU": 2.0}],
                           scaling=types) == 0


def test_workers_that_take_every_cpu_starve_ray_data():
    """2 workers x 1 CPU on 2 CPUs: Ray Data's tasks (a whole CPU each) never run (seen: the run
    waited for data, "Cluster resources are not enough to run any task")."""
    with pytest.raises(ConfigError, match=r"leave 0 of the cluster's 2 CPUs to Ray Data.*wait for data forever"):
        check_placement(_train(num_workers=2, cpus_per_worker=1), nodes=[{"CPU": 2.0}], scaling=FIXED)
    with pytest.raises(ConfigError, match="leave 0.5 of the cluster's 2 CPUs"):
        check_placement(_train(num_workers=1, cpus_per_worker=1), extra_cpus=0.5, nodes=[{"CPU": 2.0}], scaling=FIXED)
    assert check_placement(_train(num_workers=2, cpus_per_worker=0.5), nodes=[{"CPU": 2.0}], scaling=FIXED) == 4


def test_ray_data_starvation_on_an_autoscaling_cluster_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="ray_sticker.train"):
        check_placement(_train(num_workers=2, cpus_per_worker=1), nodes=[{"CPU": 2.0}], scaling=GROWS)
    assert "to Ray Data" in caplog.text and "until the autoscaler adds CPUs" in caplog.text


# ---------------------------------------------------------------------------- fixed or autoscaling


def test_node_type_names_tell_fixed_from_autoscaling():
    assert placement.classify_node_types(["node_5ea20b4b8d00", "node_0a1b"]) == "fixed"  # read-only monitor
    assert placement.classify_node_types([""]) == "fixed"
    assert placement.classify_node_types(["node_5ea20b4b8d00", "ray.worker.gpu"]) == "autoscaling"
    assert placement.classify_node_types([]) == "unknown"


def test_reported_cluster_config_gives_kind_and_node_types():
    from ray.core.generated.autoscaler_pb2 import ClusterConfig, NodeGroupConfig

    def config(*groups):
        out = ClusterConfig()
        for name, resources, lo, hi in groups:
            group = NodeGroupConfig(name=name, min_count=lo, max_count=hi)
            group.resources.update(resources)
            out.node_group_configs.append(group)
        return out

    grows = placement.from_cluster_config(config(("gpu", {"CPU": 8, "GPU": 1}, 0, 4), ("cpu", {"CPU": 4}, 2, 2)))
    assert grows.kind == "autoscaling" and grows.node_types == {"gpu": {"CPU": 8.0, "GPU": 1.0}, "cpu": {"CPU": 4.0}}
    fixed = placement.from_cluster_config(config(("cpu", {"CPU": 4}, 2, 2)))
    assert fixed.kind == "fixed" and fixed.max_nodes == {"cpu": 2}
    # Its two listed nodes may still be starting: 4 workers of 2 CPUs may come, 5 never.
    assert check_placement(_train(num_workers=4, cpus_per_worker=2), nodes=[{"CPU": 1.0}], scaling=fixed) == 0
    with pytest.raises(ConfigError, match="num_workers=5 .* does not autoscale"):
        check_placement(_train(num_workers=5, cpus_per_worker=2), nodes=[{"CPU": 1.0}], scaling=fixed)
    assert placement.from_cluster_config(config(("cpu", {"CPU": 4}, 0, -1))).kind == "autoscaling"
    assert placement.from_cluster_config(ClusterConfig()) is None


# ---------------------------------------------------------------------------- a real local Ray


def _finishes(fn, seconds: float) -> BaseException | None:
    """Run ``fn`` in a thread; its exception (None if it returned), or fail after ``seconds``."""
    out: dict[str, BaseException | None] = {}

    def run():
        try:
            fn()
            out["error"] = None
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still waiting after {seconds:.0f}s: the run was not rejected before Ray Train started")
    return out["error"]


@pytest.mark.ray
def test_local_ray_is_fixed_and_its_monitor_says_so(ray_cluster, monkeypatch):
    assert placement.autoscaling() == Autoscaling("fixed", "a local Ray started by this process")
    deadline = time.monotonic() + 20
    while not placement._monitor_v1_node_types() and time.monotonic() < deadline:
        time.sleep(0.5)  # the monitor writes its first status a few seconds after start
    # As a driver that connected to the cluster sees it (a submitted job): Ray's records.
    monkeypatch.setattr(placement, "_started_here", lambda: False)
    assert placement.autoscaling() == Autoscaling("fixed", "the autoscaler monitor's status")
    assert placement._monitor_v2_node_types() == []  # this Ray runs the v1 autoscaler monitor
    assert [node["CPU"] for node in placement.alive_nodes()] == [2.0]


@pytest.mark.ray
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.num_workers=8", "train.use_gpu=true"],
         "train.num_workers=8 workers of {CPU: 0.5, GPU: 1} each cannot be placed: the cluster's alive nodes "
         "have 1 x {CPU: 2, GPU: 0}, room for 0 (per node)"),
        (["train.num_workers=2", "train.cpus_per_worker=1"], "leave 0 of the cluster's 2 CPUs to Ray Data"),
    ],
)
def test_run_the_cluster_cannot_place_is_rejected_in_seconds(ray_cluster, tmp_path, overrides, message):
    from ray_sticker import storage
    from ray_sticker.train.inputs import check_inputs
    from ray_sticker.train.trainer import run_training

    cfg = load_config("m2sa-tiny", [f"data.uri={tmp_path / 'ds'}", "data.synthetic_if_missing=true",
                                    "data.synthetic_rows=64", f"train.storage_path={tmp_path / 'runs'}",
                                    "train.run_name=unplaceable", "train.epochs=1", *overrides])
    check_inputs(cfg)  # the dataset is written before the clock starts
    t0 = time.perf_counter()
    error = _finishes(lambda: run_training(cfg), seconds=60)
    elapsed = time.perf_counter() - t0
    assert isinstance(error, ConfigError), repr(error)
    assert message in str(error) and "\n" not in str(error)
    assert elapsed < 15, elapsed
    assert not storage.exists(str(tmp_path / "runs" / "unplaceable")) and not os.path.exists(tmp_path / "runs")


@pytest.mark.ray
def test_sweep_whose_trials_cannot_be_placed_is_rejected_before_any_trial(ray_cluster, tmp_path):
    from ray_sticker.sweep.runner import run_sweep
    from ray_sticker.sweep.spec import SweepSpec

    spec = SweepSpec.model_validate({
        "name": "unplaceable", "config": "m2sa-tiny", "metric": "val_loss", "mode": "min",
        "overrides": [f"data.uri={tmp_path / 'ds'}", "data.synthetic_if_missing=true", "data.synthetic_rows=64"],
        "points": [{"train.lr": 1e-3}, {"train.lr": 1e-4, "train.num_workers": 3}],
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "storage_path": str(tmp_path / "sweeps"),
    })
    error = _finishes(lambda: run_sweep(spec), seconds=120)
    assert isinstance(error, ConfigError), repr(error)
    # The second point's 3 workers of 1 CPU do not fit the 2 CPUs; checked before Tune starts.
    assert "train.num_workers=3 workers of {CPU: 1} each cannot be placed" in str(error)
    assert not (tmp_path / "sweeps" / "unplaceable" / "sweep.yaml").exists()
