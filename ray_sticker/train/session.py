"""What the training loop asks of the process it runs in: its rank, its data, where its reports
and checkpoints go. :class:`RayTrainSession` inside a Ray Train worker; :class:`LocalSession` in
local mode (``train.num_workers: 0``), where the loop runs in the driver's process as the only
rank: the driver hands it the Ray Datasets, the loop writes its checkpoints into the run
directory (pruned to ``train.checkpoints_to_keep``) and calls the run's Ray Train callbacks
itself (progress lines, a sweep's reports to Tune), as Ray Train's controller would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def node_id() -> str:
    """The Ray node this process runs on ("" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


class RayTrainSession:
    """A Ray Train worker's."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def node_id(self) -> str:
        return node_id()

    def device_index(self) -> int:
        import ray.train.torch

        return ray.train.torch.get_device().index or 0

    def dataset(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)

    def latest_checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None, name: str | None = None) -> None:
        """Rank 0's ``metrics`` (every rank calls this) and, with ``checkpoint_dir``, the rank's
        files of checkpoint ``name`` in the run directory."""
        import ray.train
        from ray.train import Checkpoint

        if checkpoint_dir is None:
            ray.train.report(metrics)
        else:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(checkpoint_dir), checkpoint_dir_name=name)


@dataclass
class LocalSession:
    """Local mode's: this process is rank 0 of 1."""

    datasets: dict[str, Any]
    run_dir: str
    checkpoints_to_keep: int | None
    callbacks: list = field(default_factory=list)
    rank: int = 0
    world: int = 1

    def node_id(self) -> str:
        return node_id()

    def device_index(self) -> int:
        import torch

        return torch.cuda.current_device()

    def dataset(self, name: str):
        return self.datasets[name]

    def latest_checkpoint(self):
        return None  # the loop looks in the run directory

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None, name: str | None = None) -> None:
        from ray.train import Checkpoint

        from ray_sticker import storage
        from ray_sticker.train import checkpoints

        checkpoint = None
        if checkpoint_dir is not None:
            uri = storage.join(self.run_dir, name)
            storage.upload_dir(checkpoint_dir, uri)
            if self.checkpoints_to_keep is not None:
                for _, old in checkpoints.epoch_checkpoints(self.run_dir)[self.checkpoints_to_keep:]:
                    storage.delete(old)
            fs, path = storage.resolve(uri)
            checkpoint = Checkpoint(path=path, filesystem=fs)
        for callback in self.callbacks:
            callback.after_report(None, [metrics], checkpoint)
