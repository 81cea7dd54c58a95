"""Training across the nodes of a real multi-node Ray (``ray.cluster_utils.Cluster``: a head
and two worker nodes, each its own raylet and object store), with the dataset, checkpoints
and export on the S3 server; then a worker node preempted mid-epoch. Marker ``cluster``:
these tests start their own Ray, so they run in their own pytest call (``pytest -m
cluster``, see .ci/run), never beside the suite's."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from ray_sticker import storage
from ray_sticker.cli import main as cli_main
from ray_sticker.config import ConfigError, load_config
from ray_sticker.train.checkpoints import INTEGRITY_DIR
from ray_sticker.train.trainer import run_training

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.s3]

# Each worker node offers one "trainer" slot: a run asking for it per worker (as a GPU run
# asks for a GPU) can only place its workers on those nodes, never on the head.
SLOT = "trainer"
WORKER_NODE = {"num_cpus": 2, "resources": {SLOT: 1}}
# What legitimately differs between two runs of the same seed: timings, and where ranks ran.
NOT_COMPARED = {"samples_per_s", "data_wait_s", "step_s", "data_wait_fraction", "epoch_s", "worker_nodes"}


@pytest.fixture(scope="module")
def cluster(s3_server, ray_sticker_home):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(**WORKER_NODE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {**s3_server.env(),
                                                                "RAY_STICKER_HOME": str(ray_sticker_home)}})
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def bucket(s3_server):
    """A bucket holding the synthetic dataset, for the module."""
    name = f"multinode-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    with pytest.MonkeyPatch.context() as env:
        for key, value in s3_server.env().items():
            env.setenv(key, value)
        assert cli_main(["-q", "prepare", "synthetic", "--out", f"s3://{name}/data", "--image-size", "32"]) == 0
    return f"s3://{name}"


def _cfg(bucket: str, run_name: str, *overrides: str):
    return load_config("m2sa-tiny", [f"data.uri={bucket}/data", "data.synthetic_if_missing=false", "train.epochs=2",
                                     f"train.storage_path={bucket}/runs", f"train.run_name={run_name}",
                                     f"train.worker_resources={{{SLOT}: 1}}", "train.placement_strategy=SPREAD",
                                     *overrides])


@pytest.fixture(scope="module")
def reference(cluster, bucket, s3_server):
    """An uninterrupted run: one rank on each worker node."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in s3_server.env().items():
            env.setenv(key, value)
        return run_training(_cfg(bucket, "reference"))


def _worker_node_ids(cluster) -> set[str]:
    return {node.node_id for node in cluster.worker_nodes}


def test_workers_on_two_nodes_train_from_s3_and_checkpoint_to_s3(cluster, bucket, reference, s3_env):
    # A node's own disk cannot hold the run of a multi-node cluster: refused before it starts.
    with pytest.raises(ConfigError, match=r"train.storage_path=.* is on a node's own disk and the cluster has 3 nodes"):
        run_training(_cfg(bucket, "local", "train.storage_path=/tmp/ray-sticker-runs"))

    final = reference.final
    # One rank on each worker node (the slot keeps them off the head), gathered like the metrics.
    assert final["world_size"] == 2 and set(final["worker_nodes"]) == _worker_node_ids(cluster), final["worker_nodes"]
    assert final["val_examples"] == 300 and final["val_accuracy"] > 0.5, final
    # Each rank wrote its ZeRO partition into the bucket, not onto its node.
    run_dir = f"{bucket}/runs/reference"
    state = {u.rsplit("/", 1)[-1] for u in storage.listdir(f"{run_dir}/epoch-0001/state")}
    assert any(n.startswith("zero_pp_rank_0_") for n in state) and any(n.startswith("zero_pp_rank_1_") for n in state)
    assert storage.exists(f"{run_dir}/export/model.safetensors")
    assert storage.read_json(f"{run_dir}/metrics.json")[-1]["worker_nodes"] == final["worker_nodes"]


def _preempt_after_first_checkpoint(cluster, run_dir: str, events: dict) -> None:
    """Once epoch 0's checkpoint is complete in the bucket (both ranks' integrity manifests),
    remove a worker node with every process on it, as a spot preemption does, then add a
    fresh node of the same type, as an autoscaler would."""
    deadline = time.monotonic() + 300
    manifests = f"{run_dir}/epoch-0000/{INTEGRITY_DIR}"
    while time.monotonic() < deadline:
        if storage.exists(manifests) and len(storage.listdir(manifests)) == 2:
            break
        time.sleep(0.2)
    else:
        return
    time.sleep(1.0)  # into epoch 1
    victim = sorted(cluster.worker_nodes, key=lambda n: n.node_id)[0]
    events["removed"], events["removed_at"] = victim.node_id, time.monotonic()
    cluster.remove_node(victim, allow_graceful=False)
    events["added"] = cluster.add_node(**WORKER_NODE).node_id


def test_a_preempted_worker_node_is_replaced_and_the_run_ends_as_if_uninterrupted(cluster, bucket, reference, s3_env):
    cfg = _cfg(bucket, "preempted", "train.max_failures=2")
    events: dict = {}
    preempt = threading.Thread(target=_preempt_after_first_checkpoint,
                               args=(cluster, f"{bucket}/runs/preempted", events), daemon=True)
    preempt.start()
    result = run_training(cfg)
    preempt.join(timeout=30)

    assert "removed" in events, "no node was removed"
    recovered_s = time.monotonic() - events["removed_at"]
    assert result.start_epoch == 1  # resumed from epoch 0's checkpoint in the bucket
    assert events["removed"] not in result.final["worker_nodes"] and events["added"] in result.final["worker_nodes"]
    assert [h["global_step"] for h in result.history] == [h["global_step"] for h in reference.history]
    for got, want in zip(result.history, reference.history, strict=True):
        for key in want.keys() - NOT_COMPARED:
            expected = pytest.approx(want[key], rel=1e-5, abs=1e-7) if isinstance(want[key], float) else want[key]
            assert got[key] == expected, (got["epoch"], key, got[key], want[key])
    print(f"\npreempted node {events['removed'][:8]}: epoch 1 ran again on {events['added'][:8]}; "
          f"{recovered_s:.1f} s from the removal to the end of the run (the reference run took {reference.wall_s:.1f} s)")
