"""What training does to a usable batch before the step: fresh negatives per epoch where the
paper samples them (data/candidates.py) and augmentation of every image, the candidate
stickers' included (train/batches.py, train/augment.py)."""

import numpy as np
import pytest
import torch

from ray_sticker.config import load_config
from ray_sticker.data.candidates import redraw_candidates
from ray_sticker.data.pool import EncodedPool, StickerPool
from ray_sticker.train.batches import attach_candidates, prepare_train_batch

POOL, K = 50, 5


def test_redraw_candidates_fresh_each_epoch_and_the_same_after_a_resume():
    positive, keys = np.array([0, 7, 49, 7]), np.array([11, 12, 13, 12])
    idx, target = redraw_candidates(positive, keys, POOL, K, seed=42, epoch=0)
    assert idx.shape == (4, K) and idx.min() >= 0 and idx.max() < POOL
    for row, pos, t in zip(idx, positive, target):
        assert len(set(row.tolist())) == K and row.tolist().count(pos) == 1 and row[t] == pos
    np.testing.assert_array_equal(idx[1], idx[3])  # seeded by the example, not its place in a batch
    again = redraw_candidates(positive, keys, POOL, K, seed=42, epoch=0)  # e.g. a resumed epoch
    np.testing.assert_array_equal(again[0], idx)
    np.testing.assert_array_equal(again[1], target)
    later = [redraw_candidates(positive, keys, POOL, K, seed=42, epoch=e)[0] for e in range(1, 4)]
    assert all(not np.array_equal(x, idx) for x in later)
    other_seed = redraw_candidates(positive, keys, POOL, K, seed=43, epoch=0)[0]
    assert not np.array_equal(other_seed, idx)
    positions = {int(t) for e in range(30) for t in redraw_candidates(positive, keys, POOL, K, 42, e)[1]}
    assert positions == set(range(K))  # the positive is not always in one place
    with pytest.raises(ValueError, match="need 4 distractors per example but the pool has 4 stickers"):
        redraw_candidates(positive[:1], keys[:1], 4, K, 42, 0)


def pool_of(pixels: np.ndarray, intent: np.ndarray) -> StickerPool:
    """A pool of these uint8 (N, 3, S, S) images (as PNG: lossless) and intent labels."""
    import io

    from PIL import Image

    encoded = []
    for p in pixels:
        buf = io.BytesIO()
        Image.fromarray(p.transpose(1, 2, 0)).save(buf, format="PNG")
        encoded.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
    return StickerPool(EncodedPool(np.concatenate(encoded), offsets, np.ones(len(pixels), bool), {},
                                   {"intent": intent}, pixels.shape[-1]))


def _selection_batch() -> tuple[dict[str, torch.Tensor], StickerPool, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (POOL, 3, 16, 16), dtype=torch.uint8, generator=gen)
    pool = pool_of(pixels.numpy(), np.arange(POOL))
    batch = {"candidate_idx": torch.tensor([[3, 1, 2, 0, 4], [9, 8, 7, 6, 5]]), "target": torch.tensor([3, 0]),
             "candidate_key": torch.tensor([77, -1]),  # row 0 drawn from the pool, row 1 stored
             "pixel_values": torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=gen)}
    return batch, pool, pixels


def test_only_drawn_candidate_sets_are_redrawn():
    batch, pool, pixels = _selection_batch()
    fixed = attach_candidates(dict(batch), pool)
    assert torch.equal(fixed["candidate_pixel_values"], pixels[batch["candidate_idx"]])  # decoded as stored
    assert "candidate_key" not in fixed  # read here, never seen by a model
    assert fixed["candidate_idx"].tolist() == batch["candidate_idx"].tolist()
    epochs = [attach_candidates(dict(batch), pool, redraw=(42, e)) for e in range(3)]
    for out in epochs:
        assert out["candidate_idx"][1].tolist() == [9, 8, 7, 6, 5] and int(out["target"][1]) == 0  # stored: kept
        assert int(out["candidate_idx"][0, out["target"][0]]) == 0  # the positive (pool row 0) stays
        assert torch.equal(out["candidate_intent"], torch.arange(POOL)[out["candidate_idx"]])
    assert len({tuple(out["candidate_idx"][0].tolist()) for out in epochs}) == 3
    assert batch["candidate_idx"].tolist()[0] == [3, 1, 2, 0, 4]  # the pipeline's batch is not altered


def test_training_augments_the_candidate_stickers_too_and_leaves_the_pool_alone():
    batch, pool, pixels = _selection_batch()
    cfg = load_config("eigml-tiny", ["data.augment=true"])
    out = prepare_train_batch(dict(batch), pool, cfg, 0, torch.Generator().manual_seed(1))
    plain = pixels[out["candidate_idx"]]
    assert out["candidate_pixel_values"].shape == plain.shape == (2, K, 3, 16, 16)
    changed = [not torch.equal(out["candidate_pixel_values"][b, k], plain[b, k]) for b in range(2) for k in range(K)]
    assert sum(changed) >= 8, changed  # cropped and flipped per sticker (rarely an identity)
    assert not torch.equal(out["pixel_values"], batch["pixel_values"])
    assert torch.equal(torch.from_numpy(pool.rows(np.arange(POOL))["pixel_values"]), pixels)  # the pool's own rows
    again = prepare_train_batch(dict(batch), pool, cfg, 0, torch.Generator().manual_seed(1))
    assert torch.equal(again["candidate_pixel_values"], out["candidate_pixel_values"])  # seeded
    off = prepare_train_batch(dict(batch), pool, load_config("eigml-tiny", ["data.augment=false"]), 0,
                              torch.Generator().manual_seed(1))
    assert torch.equal(off["candidate_pixel_values"], plain)


def test_random_erasing_zeroes_one_rectangle_per_chosen_image_reproducibly():
    from ray_sticker.train.augment import random_erasing

    pixels = torch.full((400, 3, 16, 16), 200, dtype=torch.uint8)
    out = random_erasing(pixels, torch.Generator().manual_seed(0), p=0.5)
    erased = (out == 0).flatten(1).any(1)
    assert 0.4 < erased.float().mean().item() < 0.6  # about p of the images
    for img in out[erased][:50]:
        zero = (img[0] == 0).nonzero()
        (r0, c0), (r1, c1) = zero.min(0).values.tolist(), zero.max(0).values.tolist()
        assert bool((img[:, r0:r1 + 1, c0:c1 + 1] == 0).all())  # one solid rectangle, every channel
        assert zero.shape[0] == (r1 - r0 + 1) * (c1 - c0 + 1)
        assert 0.01 * 256 <= zero.shape[0] <= 0.4 * 256  # about scale (0.02, 0.33) of the area
    assert torch.equal(out, random_erasing(pixels, torch.Generator().manual_seed(0), p=0.5))
    assert torch.equal(random_erasing(pixels, torch.Generator().manual_seed(0), p=0.0), pixels)
    cfg = load_config("mdse-tiny", ["data.augment=true", "data.random_erasing=1.0"])
    batch = prepare_train_batch({"pixel_values": pixels[:8].clone()}, None, cfg, 0, torch.Generator().manual_seed(1))
    assert bool((batch["pixel_values"] == 0).flatten(1).any(1).all())  # the training batch goes through it
    assert load_config("mdse").data.random_erasing == 0.5
