"""Can the connected Ray cluster place a run's training workers? Checked before anything starts.

Ray Train asks for ``train.num_workers`` bundles of ``{"CPU": cpus_per_worker}`` (plus
``{"GPU": 1}`` with ``train.use_gpu``) and, when the cluster cannot hold them, waits for
resources that never come. :func:`check_placement` counts how many bundles the alive
nodes' total resources hold, node by node (a bundle never spans nodes), and:

- on a fixed cluster, raises :class:`ConfigError` when fewer than ``num_workers`` fit (nodes
  that a reported cluster config lists count too: they may still be starting);
- on an autoscaling cluster (nodes may come later), logs a warning instead, unless not one
  bundle fits on any node nor on any node type the autoscaler can launch (when Ray knows
  the node types), which no scaling can change: that raises too;
- when the workers leave less than one whole CPU of the cluster to Ray Data's preprocessing
  tasks (which take a CPU each), the workers wait for data forever: rejected on a fixed
  cluster, a warning on an autoscaling one.

Telling a fixed cluster from an autoscaling one (Ray 2.60): a Ray this process started
itself is fixed. Otherwise Ray's own records decide: the cluster config an autoscaler
reports to the GCS (node types with min/max counts, read by Ray Train and Ray Data too),
else the node types the autoscaler monitor sees (v1: the ``ray status`` record in the GCS;
v2: the autoscaler's cluster status). A cluster without an autoscaler is still watched by
a read-only monitor that names every node ``node_<node id>``; named node types come from
a cluster config, whose autoscaler can add nodes. When none of these can be read, the
cluster counts as autoscaling (warn, never reject a run that might be placed).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ray_sticker.config import ConfigError, TrainConfig

log = logging.getLogger("ray_sticker.train")

Kind = Literal["fixed", "autoscaling", "unknown"]
_ANONYMOUS_NODE_TYPE = re.compile(r"^(node_[0-9a-f]+)?$")  # read-only monitors' names
_EPS = 1e-6  # Ray keeps resources to 1e-4; fractions such as 0.1 * 3 must not lose a worker


@dataclass(frozen=True)
class Autoscaling:
    """What is known of the cluster's autoscaler: ``kind`` and, when Ray reports them,
    the node types it can launch (resources of one node of each type) and how many."""

    kind: Kind
    source: str
    node_types: dict[str, dict[str, float]] = field(default_factory=dict)
    max_nodes: dict[str, int] = field(default_factory=dict)  # per node type; -1: unbounded


def worker_bundle(train: TrainConfig) -> dict[str, float]:
    """The resources of one training worker, as the trainer asks Ray Train for them."""
    return {"CPU": float(train.cpus_per_worker), **({"GPU": 1.0} if train.use_gpu else {}),
            **{k: float(v) for k, v in train.worker_resources.items()}}


def fit_on_node(bundle: dict[str, float], node: dict[str, float]) -> int:
    """How many ``bundle``s one node's resources hold."""
    counts = [math.floor(node.get(k, 0.0) / v + _EPS) for k, v in bundle.items() if v > 0]
    return max(0, min(counts)) if counts else 0


def workers_that_fit(bundle: dict[str, float], nodes: list[dict[str, float]], strategy: str = "PACK") -> int:
    """Bundles the nodes hold together, packed node by node (one per node at STRICT_SPREAD)."""
    per_node = [fit_on_node(bundle, node) for node in nodes]
    return sum(min(n, 1) for n in per_node) if strategy == "STRICT_SPREAD" else sum(per_node)


def alive_nodes() -> list[dict[str, float]]:
    """Total resources of the connected cluster's alive nodes (``ray.nodes()``)."""
    import ray

    return [{k: float(v) for k, v in n.get("Resources", {}).items()} for n in ray.nodes() if n.get("Alive")]


def classify_node_types(names: list[str]) -> Kind:
    """"fixed" when a monitor names every node anonymously (``node_<id>``: no autoscaling
    config), "autoscaling" when a node type has a name (it comes from a cluster config)."""
    if not names:
        return "unknown"
    return "fixed" if all(_ANONYMOUS_NODE_TYPE.match(n) for n in names) else "autoscaling"


def from_cluster_config(config: Any) -> Autoscaling | None:
    """The autoscaler's reported ``ClusterConfig`` (node groups with counts), None when empty.
    A group scales when its ``max_count`` is -1 (unbounded) or above its ``min_count``."""
    groups = [g for g in getattr(config, "node_group_configs", []) if g.resources and g.max_count != 0]
    if not groups:
        return None
    scales = any(g.max_count == -1 or g.max_count > g.min_count for g in groups)
    names = [g.name or f"group{i}" for i, g in enumerate(groups)]
    types = {n: {k: float(v) for k, v in g.resources.items()} for n, g in zip(names, groups)}
    return Autoscaling("autoscaling" if scales else "fixed", "the autoscaler's cluster config", types,
                       {n: int(g.max_count) for n, g in zip(names, groups)})


def _started_here() -> bool:
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return bool(node is not None and getattr(node, "head", False))


def _reported_cluster_config() -> Autoscaling | None:
    import ray._private.state

    return from_cluster_config(ray._private.state.state.get_cluster_config())


def _monitor_v1_node_types() -> list[str]:
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    status = json.loads(raw) if raw else {}
    report = status.get("autoscaler_report") or {}
    return list((report.get("node_type_mapping") or {}).values())


def _monitor_v2_node_types() -> list[str]:
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if not is_autoscaler_v2(fetch_from_server=True):
        return []
    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    if status.pending_launches or status.pending_nodes:
        return ["(launching)"]
    return [n.ray_node_type_name for n in status.active_nodes + status.idle_nodes]


def autoscaling() -> Autoscaling:
    """How the connected cluster grows; see the module docstring for the sources."""
    if _started_here():
        return Autoscaling("fixed", "a local Ray started by this process")
    try:
        reported = _reported_cluster_config()
    except Exception as exc:  # noqa: BLE001 - an unreadable record leaves the next source
        log.debug("cluster config unreadable: %s", exc)
        reported = None
    if reported is not None:
        return reported
    for source, read in (("the autoscaler monitor's status", _monitor_v1_node_types),
                         ("the autoscaler v2 status", _monitor_v2_node_types)):
        try:
            kind = classify_node_types(read())
        except Exception as exc:  # noqa: BLE001
            log.debug("%s unreadable: %s", source, exc)
            continue
        if kind != "unknown":
            return Autoscaling(kind, source)
    return Autoscaling("unknown", "no autoscaler record")


def describe_nodes(nodes: list[dict[str, float]], keys: list[str]) -> str:
    """``"2 x {CPU: 8, GPU: 1}, 1 x {CPU: 2}"``: alive nodes grouped by the resources in ``keys``."""
    if not nodes:
        return "no alive node"
    groups: dict[str, int] = {}
    for node in nodes:
        text = _resources(node, keys)
        groups[text] = groups.get(text, 0) + 1
    return ", ".join(f"{n} x {text}" for text, n in groups.items())


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_placement(train: TrainConfig, extra_cpus: float = 0.0,
                    nodes: list[dict[str, float]] | None = None, scaling: Autoscaling | None = None) -> int:
    """Check that the cluster can place ``train.num_workers`` workers and leave Ray Data a CPU;
    returns how many workers fit now. Raises :class:`ConfigError` when it cannot and cannot
    grow to (see the module docstring); warns when it may grow. ``extra_cpus``: CPUs held
    beside the workers (a sweep trial's driver). ``nodes`` and ``scaling`` default to the
    connected cluster's."""
    bundle = worker_bundle(train)
    nodes = alive_nodes() if nodes is None else nodes
    fit = workers_that_fit(bundle, nodes, train.placement_strategy)
    keys = list(bundle)
    wanted = f"train.num_workers={train.num_workers} workers of {_resources(bundle, keys)} each"
    if fit < train.num_workers:
        scaling = autoscaling() if scaling is None else scaling
        have = f"the cluster's alive nodes have {describe_nodes(nodes, keys)}, room for {fit} (per node)"
        if scaling.kind == "fixed" and _may_still_start(bundle, fit, scaling) < train.num_workers:
            raise ConfigError(f"{wanted} cannot be placed: {have}, and it does not autoscale "
                              f"({scaling.source}); lower train.num_workers or train.cpus_per_worker"
                              f"{', or set train.use_gpu=false' if train.use_gpu else ''}")
        if fit == 0 and scaling.node_types and not any(fit_on_node(bundle, r) for r in scaling.node_types.values()):
            types = ", ".join(f"{name} {_resources(r, keys)}" for name, r in scaling.node_types.items())
            raise ConfigError(f"{wanted} cannot be placed: {have}, and no node type the autoscaler can "
                              f"launch holds one ({types})")
        log.warning("%s do not fit yet: %s; waiting for nodes to start (%s)", wanted, have, scaling.source)
        return fit
    total_cpus = sum(n.get("CPU", 0.0) for n in nodes)
    left = max(0.0, total_cpus - train.num_workers * train.cpus_per_worker - extra_cpus)
    if left < 1.0 - _EPS:
        # Ray Data's tasks take a whole CPU each: with less left, preprocessing never runs and
        # the workers wait for data forever.
        starved = (f"{wanted} leave {_num(left)} of the cluster's {_num(total_cpus)} CPUs to Ray Data, whose "
                   "tasks take a whole CPU each")
        scaling = autoscaling() if scaling is None else scaling
        if scaling.kind == "fixed":
            raise ConfigError(f"{starved}: the run would wait for data forever ({scaling.source}); lower "
                              "train.cpus_per_worker (e.g. 0.5) or train.num_workers")
        log.warning("%s: preprocessing waits until the autoscaler adds CPUs (%s)", starved, scaling.source)
    return fit


def _may_still_start(bundle: dict[str, float], fit: int, scaling: Autoscaling) -> int:
    """An upper bound of the workers a fixed cluster holds once the nodes its config lists
    have started (they may still be starting); ``fit`` when it lists none."""
    return fit + sum(max(n, 0) * fit_on_node(bundle, scaling.node_types[t]) for t, n in scaling.max_nodes.items())


def _resources(resources: dict[str, float], keys: list[str]) -> str:
    return "{" + ", ".join(f"{k}: {_num(resources.get(k, 0.0))}" for k in keys) + "}"


def check_storage_reach(train: TrainConfig, nodes: list[dict[str, float]] | None = None,
                        scaling: Autoscaling | None = None) -> None:
    """Refuse a local ``train.storage_path`` where the run's processes may sit on several nodes:
    each worker would write its checkpoint files to its own node's disk, where neither the
    driver, nor the other ranks, nor a resume after the node is gone finds them. S3 and
    ``train.storage_shared`` (every node mounts the path) pass, and so does local mode."""
    from ray_sticker import storage

    if train.num_workers == 0 or train.storage_shared or storage.is_s3(train.storage_path):
        return
    nodes = alive_nodes() if nodes is None else nodes
    if len(nodes) > 1:
        reason = f"the cluster has {len(nodes)} nodes"
    else:
        scaling = autoscaling() if scaling is None else scaling
        if scaling.kind != "autoscaling":
            return
        reason = f"the cluster may add nodes ({scaling.source})"
    raise ConfigError(f"train.storage_path={train.storage_path} is on a node's own disk and {reason}: workers on "
                      "other nodes would write their checkpoints where no other node, and no resume, finds them; "
                      "use an s3:// URI, or set train.storage_shared=true if every node mounts this path")
