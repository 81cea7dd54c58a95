"""The cluster configs in ``cluster/`` are valid before anyone spends money on them.

Fast and offline: the AWS cluster-launcher config goes through Ray's own validation (the
``ray up`` path: ``prepare_config`` fills defaults, ``validate_config`` checks the result
against Ray's JSON schema), the KubeRay manifests are checked for the fields this project
depends on, and the runtime environment is built with ``ray.runtime_env.RuntimeEnv``.
"""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
AWS_SECRET_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
GPU_NODE_TYPES = ("gpu-1x", "gpu-4x", "gpu-1x-spot")


def _load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def _ray_validate(cfg: dict[str, Any]) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


# --------------------------------------------------------------------------- AWS launcher


@pytest.fixture(scope="module")
def aws() -> dict[str, Any]:
    return _load("aws.yaml")


def test_aws_passes_ray_validation(aws):
    prepared = _ray_validate(aws)
    assert prepared["cluster_name"] == "ray-sticker"
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"] == "us-west-2"
    assert prepared["provider"]["cache_stopped_nodes"] is False
    assert prepared["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    assert prepared["head_node_type"] == "head"


def test_aws_gpu_node_types_scale_from_zero(aws):
    types = aws["available_node_types"]
    for name in GPU_NODE_TYPES:
        node = types[name]
        assert node["min_workers"] == 0, name
        # Ray does not compare a node type's min_workers with its max_workers: check it here.
        assert 1 <= node["max_workers"] <= aws["max_workers"], name
        assert node["resources"]["GPU"] >= 1, name
    assert types["gpu-4x"]["resources"]["GPU"] == 4


def test_aws_head_gets_no_training_work(aws):
    head = aws["available_node_types"][aws["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert "GPU" not in head["resources"]


def test_aws_spot_type_and_instance_profiles(aws):
    types = aws["available_node_types"]
    assert types["gpu-1x-spot"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert types["gpu-1x-spot"]["resources"]["spot"] == 1  # train.worker_resources={spot: 1} asks for it
    assert (types["gpu-1x-spot"]["node_config"]["InstanceType"]
            == types["gpu-1x"]["node_config"]["InstanceType"])
    for name, node in types.items():
        cfg = node["node_config"]
        assert cfg["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
        volumes = [m["Ebs"]["VolumeSize"] for m in cfg["BlockDeviceMappings"]]
        assert volumes and min(volumes) >= 200, name


def test_aws_commands(aws):
    head = " ".join(aws["head_start_ray_commands"])
    worker = " ".join(aws["worker_start_ray_commands"])
    assert aws["head_start_ray_commands"][0] == "ray stop"
    assert aws["worker_start_ray_commands"][0] == "ray stop"
    assert "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker
    setup = " ".join(aws["setup_commands"])
    for package in ("deepspeed", "transformers", "open_clip_torch", "torch"):
        assert package in setup
    assert aws["file_mounts"] == {}


@pytest.mark.parametrize(
    "mutate, error",
    [
        pytest.param(lambda c: c.update(not_a_field=1), "not_a_field", id="unknown-top-level-key"),
        pytest.param(lambda c: c["available_node_types"]["gpu-1x"].update(min_workers=c["max_workers"] + 1),
                     "smaller than the sum of `min_workers`", id="min-workers-above-global-max-workers"),
        pytest.param(lambda c: c.update(head_node_type="gpu-8x"), "head_node_type", id="unknown-head-type"),
        pytest.param(lambda c: c["available_node_types"]["gpu-1x"]["resources"].update(GPU="1"),
                     "integer", id="resource-not-an-integer"),
    ],
)
def test_ray_validation_rejects_broken_copies(aws, mutate, error):
    # Proves the validation above is real: the same call refuses each broken copy.
    broken = copy.deepcopy(aws)
    mutate(broken)
    with pytest.raises(Exception, match=error):
        _ray_validate(broken)


# --------------------------------------------------------------------------- KubeRay


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d is not None]


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _env_items(doc: Any) -> list[dict[str, Any]]:
    return [item for node in _walk(doc) if isinstance(node, dict) and isinstance(node.get("env"), list)
            for item in node["env"]]


@pytest.fixture(scope="module")
def raycluster() -> dict[str, Any]:
    (doc,) = _docs("kuberay-raycluster.yaml")
    return doc


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    (doc,) = _docs("kuberay-rayjob.yaml")
    return doc


def _check_cluster_spec(spec: dict[str, Any]) -> None:
    assert spec["rayVersion"] == "2.60.0"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_container = head["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265, 10001}
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["groupName"]
        assert group["minReplicas"] == 0 <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] >= 1
        containers = group["template"]["spec"]["containers"]
        gpus = [int(c["resources"]["limits"]["nvidia.com/gpu"]) for c in containers
                if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})]
        assert gpus and all(g >= 1 for g in gpus), group["groupName"]


def _check_credentials(doc: dict[str, Any]) -> None:
    items = _env_items(doc)
    named = [i for i in items if i.get("name") in AWS_SECRET_NAMES]
    assert {i["name"] for i in named} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for item in named:
        assert "value" not in item, f"literal {item['name']} in a manifest"
        assert item["valueFrom"]["secretKeyRef"]["name"] == "ray-sticker-s3"
    for item in items:
        if item.get("name") == "AWS_ENDPOINT_URL":
            assert item["valueFrom"]["secretKeyRef"]["optional"] is True
    text = yaml.safe_dump(doc)
    assert "AKIA" not in text


def test_raycluster_manifest(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["kind"] == "RayCluster"
    spec = raycluster["spec"]
    _check_cluster_spec(spec)
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 300
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert groups.keys() == {"gpu", "gpu-4x", "gpu-spot"}
    # The spot group: the gpu group's pods on spot capacity, offering the Ray resource "spot".
    spot, gpu = groups["gpu-spot"], groups["gpu"]
    assert spot["template"]["spec"]["nodeSelector"] == {"eks.amazonaws.com/capacityType": "SPOT"}
    assert json.loads(json.loads(spot["rayStartParams"]["resources"])) == {"spot": 1}
    assert spot["template"]["spec"]["containers"] == gpu["template"]["spec"]["containers"]
    _check_credentials(raycluster)


def test_rayjob_manifest(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 600
    assert spec["activeDeadlineSeconds"] == 86400
    assert spec["backoffLimit"] == 1
    _check_cluster_spec(spec["rayClusterSpec"])
    _check_credentials(rayjob)


def test_rayjob_entrypoint_is_a_valid_training_config(rayjob):
    from ray_sticker.config import load_config

    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/train.py"]
    assert (ROOT / argv[1]).is_file()
    rest = argv[2:]
    assert rest[0] == "--config"
    name, overrides = rest[1], rest[2:]
    assert all("=" in o and not o.startswith("-") for o in overrides), overrides
    cfg = load_config(name, overrides)
    assert cfg.train.use_gpu is True
    assert cfg.train.num_workers == 4
    # Survives the loss of a node: restarts from its checkpoints, which every node reaches.
    assert cfg.train.max_failures > 0 and cfg.train.storage_path.startswith("s3://") and cfg.train.run_name


def test_rayjob_runtime_env(rayjob):
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert env["working_dir"].startswith("s3://") and env["working_dir"].endswith(".zip")
    RuntimeEnv(**env)
    assert not AWS_SECRET_NAMES & set(env.get("env_vars", {}))


# --------------------------------------------------------------------------- runtime env


def _runtime_dependencies() -> list[str]:
    """pyproject's dependencies without Ray (every cluster image has it)."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if not d.startswith("ray")]


def test_every_cluster_installs_the_projects_dependencies(aws, rayjob):
    deps = _runtime_dependencies()
    assert _load("runtime_env.yaml")["pip"] == deps
    assert yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["pip"] == deps
    installed = " ".join(aws["setup_commands"]).replace('"', "")
    assert all(d in installed.split() for d in deps), installed


def test_runtime_env_file():
    from ray.runtime_env import RuntimeEnv

    data = _load("runtime_env.yaml")
    packages = [p.split(">")[0].split("=")[0].split("<")[0] for p in data["pip"]]
    for package in ("deepspeed", "transformers", "open_clip_torch", "pyarrow", "boto3"):
        assert package in packages
    assert "ray" not in packages
    assert {".venv", "tests", ".git", "runs"} <= set(data["excludes"])
    assert data["env_vars"]["RAY_STICKER_HOME"] == "/tmp/ray-sticker"
    assert not AWS_SECRET_NAMES & set(data["env_vars"])
    env = RuntimeEnv(**data)  # builds offline: no cluster, no ray.init
    assert env.pip_config()["packages"] == data["pip"]
    assert env.env_vars() == data["env_vars"]
