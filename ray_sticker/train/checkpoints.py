"""Checkpoints that count only when complete, and resumption that skips broken ones.

Every rank writes its DeepSpeed files into a local directory and hands it to Ray Train, which
merges the ranks' directories into ``<run_dir>/epoch-NNNN/``. Before handing it over, each rank
adds ``integrity/rank-NNNNN.json``: the world size and the size and SHA-256 of every file it
wrote. A checkpoint is complete when the manifests of all ranks are there and every file they
list has its size and hash; anything else (an upload cut short, a truncated or altered file) is
skipped on resume with a warning, and the previous checkpoint is tried instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Callable

from ray_sticker import storage

log = logging.getLogger("ray_sticker.train")

INTEGRITY_DIR = "integrity"
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


def checkpoint_dir_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: str) -> list[str]:
    out = []
    for root, _, names in os.walk(directory):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), directory)
            if not rel.startswith(INTEGRITY_DIR + os.sep):
                out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def write_manifest(directory: str, rank: int, world_size: int, epoch: int) -> None:
    """Record what this rank wrote into ``directory`` (call after every file is written)."""
    files = {rel: {"size": os.path.getsize(os.path.join(directory, rel)), "sha256": _sha256(os.path.join(directory, rel))}
             for rel in _files(directory)}
    os.makedirs(os.path.join(directory, INTEGRITY_DIR), exist_ok=True)
    with open(os.path.join(directory, INTEGRITY_DIR, f"rank-{rank:05d}.json"), "w") as f:
        json.dump({"rank": rank, "world_size": world_size, "epoch": epoch, "files": files}, f, indent=1)


def verify(directory: str, hash_ranks: set[int] | None = None) -> str | None:
    """None if the checkpoint in local ``directory`` is complete, else what is wrong. Sizes are
    checked for every file; contents (SHA-256) for the files of ``hash_ranks`` (None: all)."""
    folder = os.path.join(directory, INTEGRITY_DIR)
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if not names:
        return "no integrity manifest (written by an interrupted save, or by another program)"
    manifests = {}
    for name in names:
        try:
            with open(os.path.join(folder, name)) as f:
                m = json.load(f)
            manifests[int(m["rank"])] = m
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"unreadable manifest {INTEGRITY_DIR}/{name}: {exc}"
    world = int(next(iter(manifests.values()))["world_size"])
    missing = sorted(set(range(world)) - set(manifests))
    if missing:
        return f"incomplete: no files from rank(s) {missing} of {world}"
    for rank, m in sorted(manifests.items()):
        for rel, want in m["files"].items():
            path = os.path.join(directory, rel)
            if not os.path.isfile(path):
                return f"file {rel} of rank {rank} is missing"
            size = os.path.getsize(path)
            if size != want["size"]:
                return f"file {rel} of rank {rank} has {size} bytes, {want['size']} were written"
            if (hash_ranks is None or rank in hash_ranks) and _sha256(path) != want["sha256"]:
                return f"file {rel} of rank {rank} does not have the content that was written (SHA-256 differs)"
    return None


def world_size_of(directory: str) -> int | None:
    """The world size a verified checkpoint was written with."""
    folder = os.path.join(directory, INTEGRITY_DIR)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name)) as f:
            return int(json.load(f)["world_size"])
    return None


def epoch_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """``(epoch, uri)`` of the checkpoint directories in a run directory, newest first."""
    found = []
    for uri in storage.listdir(run_dir):
        epoch = epoch_of(uri)
        if epoch is not None:
            found.append((epoch, uri))
    return sorted(found, reverse=True)


def epoch_of(path: str) -> int | None:
    """The epoch of an ``.../epoch-NNNN`` checkpoint path or URI, None for other names."""
    match = _EPOCH_DIR.match(path.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def restore(latest, run_dir: str | None, load: Callable[[str], None], agree: Callable[[bool], bool],
            rank: int = 0) -> str | None:
    """Load the newest complete checkpoint: ``latest`` (Ray Train's latest ``Checkpoint``) first,
    then the older ``epoch-*`` directories of ``run_dir``. ``load(local_dir)`` restores one;
    ``agree(ok)`` is True only when every rank's ``ok`` is (all ranks call this together and
    see the same candidates). Returns the name of the checkpoint loaded, or None."""
    from ray.train import Checkpoint

    candidates = [latest] if latest is not None else []
    if run_dir is not None and storage.exists(run_dir):
        newest = epoch_of(latest.path) if latest is not None else None
        for epoch, uri in epoch_checkpoints(run_dir):
            if newest is None or epoch < newest:
                fs, path = storage.resolve(uri)
                candidates.append(Checkpoint(path=path, filesystem=fs))
    for checkpoint in candidates:
        name = checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
        try:
            with checkpoint.as_directory() as local:
                problem = verify(local, hash_ranks={0, rank})
                if agree(problem is None):
                    try:
                        load(local)
                    except OSError as exc:  # complete, yet unloadable: not a download problem
                        raise RuntimeError(f"checkpoint {name} is complete but could not be loaded: {exc}") from exc
                    return name
        except OSError as exc:  # could not be downloaded
            problem = f"cannot be read: {exc}"
            agree(False)  # every rank calls agree() once per candidate
        if rank == 0:
            log.warning("skipping checkpoint %s: %s", name, problem or "another rank found it broken")
    if candidates and rank == 0:
        log.warning("no usable checkpoint among the %d found: training starts from the beginning", len(candidates))
    return None
