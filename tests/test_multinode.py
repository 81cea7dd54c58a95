"""Training across the nodes of a real multi-node Ray (``ray.cluster_utils.Cluster``: a head
and two worker nodes, each its own raylet and object store), with the dataset, checkpoints
and export on the S3 server. Marker ``cluster``: these tests start their own Ray, so they
run in their own pytest call (``pytest -m cluster``, see .ci/run), never beside the suite's."""

from __future__ import annotations

import pytest

from ray_sticker import storage
from ray_sticker.cli import main as cli_main
from ray_sticker.config import ConfigError, load_config
from ray_sticker.train.trainer import run_training

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.s3]

# Each worker node offers one "trainer" slot: a run asking for it per worker (as a GPU run
# asks for a GPU) can only place its workers on those nodes, never on the head.
SLOT = "trainer"


@pytest.fixture(scope="module")
def cluster(s3_server, ray_sticker_home):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=2, resources={SLOT: 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {**s3_server.env(),
                                                                "RAY_STICKER_HOME": str(ray_sticker_home)}})
    try:
        yield cluster, {node.node_id for node in workers}
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_workers_on_two_nodes_train_from_s3_and_checkpoint_to_s3(cluster, s3_env, s3_bucket):
    _, worker_nodes = cluster
    data = f"{s3_bucket}/datasets/synthetic"
    assert cli_main(["-q", "prepare", "synthetic", "--out", data, "--image-size", "32"]) == 0
    runs = f"{s3_bucket}/runs"
    common = [f"data.uri={data}", "data.synthetic_if_missing=false", "train.epochs=1",
              f"train.worker_resources={{{SLOT}: 1}}", "train.placement_strategy=SPREAD"]

    # A node's own disk cannot hold the run of a multi-node cluster: refused before it starts.
    with pytest.raises(ConfigError, match=r"train.storage_path=.* is on a node's own disk and the cluster has 3 nodes"):
        run_training(load_config("m2sa-tiny", [*common, "train.storage_path=/tmp/ray-sticker-runs"]))

    result = run_training(load_config("m2sa-tiny", [*common, f"train.storage_path={runs}", "train.run_name=spread"]))
    final = result.final
    # One rank on each worker node (the slot keeps them off the head), gathered like the metrics.
    assert final["world_size"] == 2 and set(final["worker_nodes"]) == worker_nodes, (final["worker_nodes"], worker_nodes)
    assert final["val_examples"] == 300 and final["val_accuracy"] > 0.5, final
    # Each rank wrote its ZeRO partition into the bucket, not onto its node.
    state = {u.rsplit("/", 1)[-1] for u in storage.listdir(f"{runs}/spread/epoch-0000/state")}
    assert any(n.startswith("zero_pp_rank_0_") for n in state) and any(n.startswith("zero_pp_rank_1_") for n in state)
    assert storage.exists(f"{runs}/spread/export/model.safetensors")
    assert storage.read_json(f"{runs}/spread/metrics.json")[-1]["worker_nodes"] == final["worker_nodes"]


def test_a_selection_run_maps_the_sticker_pool_on_each_node(cluster, s3_env, s3_bucket):
    """Int-RA's workers on two nodes read the pool from the object store, where a task of the
    driver's put it once (data/pool.py): each node fetches its copy, and evaluation ranks the
    whole pool in chunks spread over the two ranks."""
    _, worker_nodes = cluster
    data = f"{s3_bucket}/datasets/select"
    assert cli_main(["-q", "prepare", "synthetic", "--task", "select", "--out", data, "--image-size", "32"]) == 0
    result = run_training(load_config("intra-tiny", [
        f"data.uri={data}", "data.synthetic_if_missing=false", "train.epochs=1", f"train.storage_path={s3_bucket}/runs",
        "train.run_name=pool", f"train.worker_resources={{{SLOT}: 1}}", "train.placement_strategy=SPREAD"]))
    final = result.final
    assert set(final["worker_nodes"]) == worker_nodes, (final["worker_nodes"], worker_nodes)
    assert 0 < final["val_pool_map"] <= 1 and final["val_examples"] > 0, final
