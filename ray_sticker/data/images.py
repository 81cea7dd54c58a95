"""Image decoding and resizing, on PIL + numpy (cheap in Ray Data tasks).

Stickers come as PNG/JPEG/GIF/WebP in every mode: animated images give their first frame,
transparency is composited on a white background, every other mode becomes RGB (see
:func:`decode_image`).
Images leave the pipeline as ``uint8`` CHW arrays; normalisation happens on the worker's
device (a quarter of the bytes through the object store).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)
# Larger images are refused from their header, before a pixel is decoded: a small file can
# declare hundreds of megapixels (a decompression bomb) and exhaust a worker's memory. Below
# PIL's own warning threshold (about 89 M pixels); above any sticker's or tweet photo's size.
MAX_PIXELS = 32 * 1024 * 1024


class ImageDecodeError(ValueError):
    pass


def decode_image(data: bytes) -> Image.Image:
    """Encoded bytes -> RGB image. Raises ImageDecodeError.

    - animated GIF/WebP/PNG: the first frame;
    - transparency (RGBA, LA, PA, palette or grayscale with a transparent colour): composited
      over ``BACKGROUND`` (white);
    - palette, grayscale, bilevel, CMYK, YCbCr: converted to RGB; 16/32-bit integer grayscale
      scaled from its 16-bit range, float grayscale clipped to 0-255;
    - an EXIF orientation (phone photos): applied, so the pixels are upright.
    """
    if data is None or len(data) == 0:
        raise ImageDecodeError("empty image bytes")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise ImageDecodeError(f"image of {img.width}x{img.height} pixels is over the {MAX_PIXELS:,}-pixel cap "
                                   "(a decompression bomb?)")
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own limit, met before ours is checked
        raise ImageDecodeError(f"{exc} (over the {MAX_PIXELS:,}-pixel cap)") from None
    except Exception as exc:  # PIL raises many types for bad bytes
        raise ImageDecodeError(f"cannot decode image: {exc}") from None
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.int64)
        img = Image.fromarray(np.clip(arr >> 8, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        img = Image.alpha_composite(canvas, rgba)
    return img.convert("RGB")


def eval_transform(img: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop to ``size``x``size``; uint8 CHW."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def npy_to_png(data: bytes) -> bytes:
    """An image stored as a ``.npy`` array (HWC or CHW; uint8, or float in [0, 1]) -> PNG bytes."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise ImageDecodeError(f"cannot read .npy array: {exc}") from None
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageDecodeError(f".npy array of shape {arr.shape} is not an image")
    if arr.dtype != np.uint8:
        arr = np.asarray(arr, dtype=np.float64)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
