"""The sticker pool of a selection dataset: read once, kept encoded, shared, decoded per batch.

Decoded, a pool costs ``N x 3 x S x S`` bytes on every worker: StickerChat's 174k stickers are
8.5 GB at 128 px and 26 GB at 224 px, times the workers of a node. So the pool stays encoded:

- :func:`read_pool` reads the stickers table into a few flat arrays (:class:`EncodedPool`): the
  images' encoded bytes end to end with their offsets, the tokenized sticker texts (the
  model's ``sticker_inputs``) and the labels. Every image is decoded once there, to find the
  unusable ones (gray in the pool, counted; above ``data.max_corrupt_fraction`` the run fails).
- :func:`share_pool` does that in a Ray task and leaves the result in Ray's object store. A
  worker's ``ray.get`` maps the node's copy of those arrays zero-copy (Ray fetches one copy per
  node), so a worker's own memory holds no more than the index it builds.
- :class:`StickerPool` is one process's view: :meth:`StickerPool.rows` decodes only the
  stickers a batch asks for, each once per call, and keeps the most recent decoded stickers in
  a cache bounded by ``data.pool_cache_mb``.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from ray_sticker.data.images import ImageDecodeError, decode_image, eval_transform
from ray_sticker.data.pipeline import DataQualityError, PoolSpec, read_stickers, tokenize_inputs

log = logging.getLogger(__name__)

GRAY = 128  # the pixels of a sticker whose image cannot be decoded


@dataclass(frozen=True)
class EncodedPool:
    """A pool's stickers in the order of the run's sticker ids, as flat arrays (shared as-is)."""

    image_bytes: np.ndarray  # uint8: every sticker's encoded image, end to end (empty without images)
    image_offsets: np.ndarray  # int64 (N + 1,): sticker i's bytes are image_bytes[off[i]:off[i + 1]]
    image_ok: np.ndarray  # bool (N,): False where the image cannot be decoded (gray)
    texts: dict[str, np.ndarray]  # the tokenized sticker inputs, (N, ...) each
    labels: dict[str, np.ndarray]  # int64 (N,) per label column, -1 where unlabelled
    image_size: int | None  # pixels of a decoded sticker's side; None: the model reads no image

    @property
    def size(self) -> int:
        return int(self.image_ok.shape[0])

    @property
    def index_nbytes(self) -> int:
        """The bytes a worker holds of its own for the pool's rows: offsets, flags, labels."""
        return int(self.image_offsets.nbytes + self.image_ok.nbytes + sum(v.nbytes for v in self.labels.values()))

    @property
    def nbytes(self) -> int:
        """The bytes of every array: what the object store holds of the pool."""
        arrays = [self.image_bytes, self.image_offsets, self.image_ok, *self.texts.values(), *self.labels.values()]
        return int(sum(a.nbytes for a in arrays))


def read_pool(uri: str, spec: PoolSpec, ids: list[str], max_corrupt_fraction: float = 0.0) -> EncodedPool:
    """The stickers ``ids`` of the dataset at ``uri``, in that order, encoded (see the module)."""
    columns = ["sticker_id"]
    for t in spec.texts:
        columns += [c for c in t.columns if c not in columns]
    if spec.use_image:
        columns.append("image")
    table, where = read_stickers(uri, columns, optional=spec.label_columns)
    order = {sid: i for i, sid in enumerate(table["sticker_id"].to_pylist())}
    missing = [s for s in ids if s not in order]
    if missing:
        raise DataQualityError(f"stickers table {where} lacks stickers {missing[:5]}")
    table = table.take(pa.array([order[s] for s in ids], type=pa.int64()))
    n = table.num_rows
    batch = {c: table[c].to_numpy(zero_copy_only=False) for c in columns if c != "image"}
    texts, truncated = tokenize_inputs(batch, spec.texts, n)
    if truncated.any():
        log.info("stickers table %s: %d of %d stickers have text cut at its max_length",
                 where, int(np.count_nonzero(truncated)), n)
    labels = {c: (np.array([-1 if v is None else int(v) for v in table[c].to_pylist()], dtype=np.int64)
                  if c in table.column_names else np.full(n, -1, dtype=np.int64)) for c in spec.label_columns}
    image_bytes, offsets = np.zeros(0, np.uint8), np.zeros(n + 1, np.int64)
    ok = np.ones(n, dtype=bool)
    if spec.use_image:
        image_bytes, offsets = _flat_bytes(table["image"])
        ok = _check_images(image_bytes, offsets, ids, where, max_corrupt_fraction)
    return EncodedPool(image_bytes, offsets, ok, texts, labels, spec.image_size if spec.use_image else None)


def _flat_bytes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A binary column as (its values end to end, int64 offsets); a null is zero bytes."""
    arr = column.cast(pa.large_binary()).combine_chunks()
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=n + 1, offset=8 * arr.offset).copy()
    data = arr.buffers()[2]
    values = (np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]].copy() if data is not None
              else np.zeros(0, np.uint8))
    return values, offsets - offsets[0]


def _check_images(data: np.ndarray, offsets: np.ndarray, ids: list[str], where: str,
                  max_corrupt_fraction: float) -> np.ndarray:
    ok = np.ones(len(ids), dtype=bool)
    bad = []
    for i in range(len(ids)):
        try:
            decode_image(data[offsets[i]:offsets[i + 1]].tobytes())
        except ImageDecodeError as exc:
            ok[i] = False
            bad.append(f"{ids[i]} ({exc})")
    if bad:
        msg = f"stickers table {where}: {len(bad)} of {len(ids)} images unusable: {bad[:3]}"
        if len(bad) / len(ids) > max_corrupt_fraction:
            raise DataQualityError(msg + f", above data.max_corrupt_fraction={max_corrupt_fraction}")
        log.warning("%s; they stay in the pool as gray images", msg)
    return ok


def share_pool(uri: str, spec: PoolSpec, ids: list[str], max_corrupt_fraction: float = 0.0):
    """:func:`read_pool` in a Ray task: the ObjectRef of the pool, left in the object store of the
    node the task ran on (the caller, which owns the ref, keeps it alive). The task reserves no
    CPU: it runs once, before the run's workers start, and inside a sweep's trial it must fit the
    trial's placement group, whose bundles the trial's own workers take."""
    import ray

    task = ray.remote(num_cpus=0, max_retries=0)(read_pool)
    return task.remote(uri, spec, ids, max_corrupt_fraction)


class StickerPool:
    """One process's view of an :class:`EncodedPool`: rows by index, images decoded on demand."""

    def __init__(self, encoded: EncodedPool, cache_mb: float = 256.0, threads: int = 1):
        self.encoded = encoded
        side = encoded.image_size or 0
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cache_rows = int(cache_mb * 2**20 // (3 * side * side)) if side else 0
        self.threads = max(1, threads)  # decoding threads (PIL decodes and resizes without the GIL)
        self._executor = None

    def __getstate__(self) -> dict[str, Any]:  # sent to other processes without its threads
        return {**self.__dict__, "_executor": None}

    def __len__(self) -> int:
        return self.encoded.size

    @property
    def labels(self) -> dict[str, np.ndarray]:
        return self.encoded.labels

    def rows(self, idx: Any) -> dict[str, np.ndarray]:
        """Sticker rows ``idx`` (int array of any shape): each pool array indexed by it, and
        ``pixel_values`` ``idx.shape + (3, S, S)`` uint8 (a sticker decoded once per call)."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"sticker rows {idx.min()}..{idx.max()} outside a pool of {len(self)}")
        out = {k: v[idx] for k, v in self.encoded.texts.items()}
        if self.encoded.image_size:
            unique, inverse = np.unique(idx.reshape(-1), return_inverse=True)
            pixels = np.stack(self._decode([int(i) for i in unique])) if unique.size else self._empty()
            out["pixel_values"] = pixels[inverse.reshape(-1)].reshape(*idx.shape, *pixels.shape[1:])
        out.update({k: v[idx] for k, v in self.encoded.labels.items()})
        return out

    def take(self, idx) -> dict[str, Any]:
        """:meth:`rows` of a torch index tensor, as tensors on its device."""
        import torch

        return {k: torch.from_numpy(v).to(idx.device) for k, v in self.rows(idx.cpu().numpy()).items()}

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """All row indices in runs of at most ``size``."""
        for i in range(0, len(self), size):
            yield np.arange(i, min(i + size, len(self)))

    def _empty(self) -> np.ndarray:
        side = self.encoded.image_size
        return np.zeros((0, 3, side, side), np.uint8)

    def _decode(self, rows: list[int]) -> list[np.ndarray]:
        """The pixels of ``rows``: from the cache, else decoded (on the threads when several)."""
        out: list[np.ndarray | None] = [self._cache.get(i) for i in rows]
        todo = [j for j, p in enumerate(out) if p is None]
        for j, p in enumerate(out):
            if p is not None:
                self._cache.move_to_end(rows[j])
        if self.threads > 1 and len(todo) > self.threads:
            if self._executor is None:
                from concurrent.futures import ThreadPoolExecutor

                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="sticker-pool")
            decoded = list(self._executor.map(self._pixels, [rows[j] for j in todo]))
        else:
            decoded = [self._pixels(rows[j]) for j in todo]
        for j, pixels in zip(todo, decoded):
            out[j] = pixels
            if self._cache_rows:
                self._cache[rows[j]] = pixels
                if len(self._cache) > self._cache_rows:
                    self._cache.popitem(last=False)
        return out

    def _pixels(self, i: int) -> np.ndarray:
        enc, side = self.encoded, self.encoded.image_size
        if not enc.image_ok[i]:
            return np.full((3, side, side), GRAY, np.uint8)
        return eval_transform(decode_image(enc.image_bytes[enc.image_offsets[i]:enc.image_offsets[i + 1]].tobytes()), side)

