"""Experiment tracking: a run's metrics, config and plots sent to TensorBoard and MLflow.

:class:`Tracker` (used on rank 0 of the training workers) writes TensorBoard event files
into ``<run_dir>/tensorboard/`` (written locally and uploaded on every flush when the run
directory is on S3) and, when :class:`TrackingConfig` has an ``mlflow_uri``, logs the same
to one MLflow run per run name, which a resumed training run continues.  MLflow is an
optional dependency (``pip install 'ray-sticker[tracking]'``).  :func:`read_scalars` and
:func:`read_image_tags` read event files back without the ``tensorboard`` package.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import numbers
import os
import posixpath
import re
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from ray_sticker import storage

# tensorboardX is imported where events are written or read: importing it imports torch
# (2-4 s), and this module is imported wherever a run's plan is unpickled (Ray Train's
# controller among them), which needs only TrackingConfig.
if TYPE_CHECKING:
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2
    from tensorboardX.proto.summary_pb2 import Summary

log = logging.getLogger(__name__)

RUN_NAME_TAG = "ray_sticker.run_name"
RUN_DIR_TAG = "ray_sticker.run_dir"
_MLFLOW_PARAM_VALUE_MAX = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_MLFLOW_KEY_MAX = 250  # MAX_ENTITY_KEY_LENGTH, for metric names and param keys
_MLFLOW_PARAMS_PER_BATCH = 100
_MLFLOW_METRICS_PER_BATCH = 1000
# MLflow names allow alphanumerics, "_", "-", ".", " " and "/" (and ":" except on Windows servers).
_MLFLOW_BAD_CHARS = re.compile(r"[^\w./ -]")


@dataclass(frozen=True)
class TrackingConfig:
    """Where a run's tracking goes; made on the driver (:meth:`from_env`), carried to rank 0."""

    run_dir: str  # local path or s3:// URI of the run directory
    run_name: str
    experiment: str  # MLflow experiment name
    mlflow_uri: str | None = None  # None: TensorBoard only
    tensorboard: bool = True

    @classmethod
    def from_env(cls, run_dir: str, run_name: str, experiment: str) -> "TrackingConfig":
        """``mlflow_uri`` from ``$MLFLOW_TRACKING_URI``: read on the driver, carried to the workers in this object."""
        return cls(run_dir, run_name, experiment, mlflow_uri=os.environ.get("MLFLOW_TRACKING_URI") or None)


class Tracker:
    """Logs one training run to TensorBoard and (optionally) MLflow; a context manager.

    ``params``: the experiment config as a nested dict, logged once (MLflow params with dotted
    keys, a TensorBoard text summary "config").
    """

    def __init__(self, config: TrackingConfig, params: dict[str, Any] | None = None) -> None:
        self.config = config
        self._tb_remote: str | None = None
        self._tb_local: str | None = None
        self._writer: EventsWriter | None = None
        self._mlflow: _MlflowRun | None = None
        self._closed = False
        try:
            if config.tensorboard:
                self._open_tensorboard(params)
            if config.mlflow_uri:
                self._mlflow = _MlflowRun(config, _flatten(params or {}))
        except BaseException:
            self.close(failed=True)
            raise

    def _open_tensorboard(self, params: dict[str, Any] | None) -> None:
        tb_uri = storage.join(self.config.run_dir, "tensorboard")
        if storage.is_s3(tb_uri):
            self._tb_remote, self._tb_local = tb_uri, tempfile.mkdtemp(prefix="ray-sticker-tb-")
        else:
            self._tb_local = storage.resolve(tb_uri)[1]
        os.makedirs(self._tb_local, exist_ok=True)
        # The synchronous writer, not tensorboardX's FileWriter: that one's flush() skips the events its
        # thread has not taken from the queue yet.  Event files are named by the second and host: the
        # suffix keeps a run resumed within the second from overwriting one, and the names in time order
        # (the order TensorBoard and read_scalars read them in).
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.summary import text as text_summary

        self._writer = EventsWriter(os.path.join(self._tb_local, "events"), f".{time.time_ns()}")
        if params:
            text = json.dumps(params, indent=2, sort_keys=True, default=str)
            # Indented: a Markdown code block, so TensorBoard keeps the layout.
            self._write(text_summary("config", "\n".join("    " + line for line in text.splitlines())), 0)

    def _write(self, summary: Summary, step: int) -> None:
        from tensorboardX.proto import event_pb2

        self._writer.write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def log_scalars(self, scalars: dict[str, Any], step: int, prefix: str = "") -> None:
        """Log the finite numbers of ``scalars`` as ``prefix + key``; other values (str, list, bool, None, NaN)
        are skipped.  MLflow gets the names with other characters than it allows replaced by "_"."""
        values = {prefix + key: float(v) for key, v in scalars.items() if _is_finite_number(v)}
        if self._writer is not None and values:
            from tensorboardX.proto.summary_pb2 import Summary

            # Built here, the summary keeps the tags as given: tensorboardX's add_scalar turns "val_r@1" into "val_r_1".
            self._write(Summary(value=[Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()]), step)
        if self._mlflow is not None:
            self._mlflow.log_metrics(values, step)

    def log_image(self, tag: str, png: bytes, step: int) -> None:
        """Log a PNG (a plot): a TensorBoard image summary and the MLflow artifact ``<tag>-step<step>.png``."""
        if self._writer is not None:
            from PIL import Image
            from tensorboardX.proto.summary_pb2 import Summary

            with Image.open(io.BytesIO(png)) as image:  # reads the header only: the PNG is stored as it is
                encoded = Summary.Image(height=image.height, width=image.width,
                                        colorspace=len(image.getbands()), encoded_image_string=png)
            self._write(Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)
        if self._mlflow is not None:
            self._mlflow.log_file(f"{tag}-step{step}.png", png)

    def flush(self) -> None:
        """Make the TensorBoard files reach ``<run_dir>/tensorboard/`` (uploaded when the run directory is on S3)."""
        if self._writer is None:
            return
        self._writer.flush()
        if self._tb_remote is not None:
            storage.upload_dir(self._tb_local, self._tb_remote)

    def close(self, failed: bool = False) -> None:
        """Flush and end the MLflow run (FAILED if ``failed``, else FINISHED); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._writer is not None:
                self._writer.close()
                if self._tb_remote is not None:
                    storage.upload_dir(self._tb_local, self._tb_remote)
        finally:
            if self._tb_remote is not None:
                shutil.rmtree(self._tb_local, ignore_errors=True)
            if self._mlflow is not None:
                self._mlflow.end(failed)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: type | None, *_: Any) -> None:
        self.close(failed=exc_type is not None)


class _MlflowRun:
    """The MLflow run of one run name: created in the experiment (created too if needed),
    or continued when a run with that name's tag is already there."""

    def __init__(self, config: TrackingConfig, params: dict[str, str]) -> None:
        entities, client_cls = _import_mlflow(config.mlflow_uri)
        self._metric_cls, self._param_cls = entities.Metric, entities.Param
        with _file_store_allowed(config.mlflow_uri):
            self.client = client_cls(config.mlflow_uri)
        experiment_id = self._experiment_id(config.experiment)
        found = self.client.search_runs([experiment_id], f"tags.`{RUN_NAME_TAG}` = {_quoted(config.run_name)}",
                                        order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=config.run_name,
                                         tags={RUN_NAME_TAG: config.run_name, RUN_DIR_TAG: config.run_dir})
            self.run_id = run.info.run_id
        try:
            self._log_params(params, self.client.get_run(self.run_id).data.params)
        except BaseException:
            self.end(failed=True)
            raise

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:
            # Another run (a sweep's trial) may have created it in the meantime.
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _log_params(self, params: dict[str, str], logged: dict[str, str]) -> None:
        # MLflow params cannot change: a resumed run logs only the new ones.
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            log.warning("MLflow run %s keeps its first values of the changed params %s", self.run_id, changed)
        new = [self._param_cls(k, v) for k, v in params.items() if k not in logged]
        for batch in _batches(new, _MLFLOW_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=batch)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        now_ms = int(time.time() * 1000)
        metrics = [self._metric_cls(_mlflow_name(k), v, now_ms, step) for k, v in values.items()]
        for batch in _batches(metrics, _MLFLOW_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch)

    def log_file(self, artifact: str, data: bytes) -> None:
        folder, name = posixpath.split(artifact)
        with tempfile.TemporaryDirectory(prefix="ray-sticker-mlflow-") as tmp:
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(data)
            self.client.log_artifact(self.run_id, path, artifact_path=folder or None)

    def end(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _import_mlflow(uri: str) -> tuple[Any, Any]:
    """``(mlflow.entities, MlflowClient)``, or an ImportError saying what to install."""
    try:
        from mlflow import entities
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise ImportError(f"MLflow tracking ({uri}) needs the mlflow-skinny package: "
                          "pip install 'ray-sticker[tracking]'") from e
    return entities, MlflowClient


@contextlib.contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 refuses file stores (file://, plain paths) unless MLFLOW_ALLOW_FILE_STORE is set:
    a user who asked for one gets it (a client keeps the store it made)."""
    if ("://" in uri and not uri.lower().startswith("file://")) or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        del os.environ["MLFLOW_ALLOW_FILE_STORE"]


def _quoted(value: str) -> str:
    """A string literal of MLflow's search syntax, which has quotes but no escapes."""
    quote = '"' if "'" in value else "'"
    if quote in value:
        raise ValueError(f"MLflow cannot search for a name with both kinds of quotes: {value!r}")
    return f"{quote}{value}{quote}"


def _mlflow_name(key: str) -> str:
    """A metric or param name MLflow accepts: other characters become "_", empty and relative path parts are dropped."""
    parts = [p for p in _MLFLOW_BAD_CHARS.sub("_", key).split("/") if p not in ("", ".", "..")]
    return "/".join(parts)[:_MLFLOW_KEY_MAX] or "_"


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> ``{"train.lr": "0.001"}``, names as MLflow accepts them, values cut to its limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[_mlflow_name(name)] = str(value)[:_MLFLOW_PARAM_VALUE_MAX]
    return flat


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _is_finite_number(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(float(value)))


def _events(uri: str) -> Iterator[event_pb2.Event]:
    """The events of every event file under ``uri``, files in name (= start time) order."""
    from tensorboardX.proto import event_pb2

    for file_uri in storage.listdir(uri):
        if ".tfevents." not in posixpath.basename(file_uri):
            continue
        data, pos = storage.read_bytes(file_uri), 0
        # TFRecord framing: uint64 length, uint32 masked CRC of it, data, uint32 masked CRC of the data.
        while pos + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            end = pos + 12 + length
            if end + 4 > len(data):
                break  # a record still being written
            yield event_pb2.Event.FromString(data[pos + 12:end])
            pos = end + 4


def read_scalars(uri: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files under ``uri`` (a run's tensorboard/ directory, local or s3://):
    tag -> [(step, value)] in file order."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for event in _events(uri):
        for value in event.summary.value:
            if value.WhichOneof("value") == "simple_value":
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def read_image_tags(uri: str) -> set[str]:
    """The tags of every image summary in the event files under ``uri``."""
    return {value.tag for event in _events(uri) for value in event.summary.value if value.HasField("image")}
