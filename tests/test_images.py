import io

import numpy as np
import pytest
from PIL import Image

from ray_sticker.data.images import ImageDecodeError, decode_image, eval_transform


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgba_transparency_composited_on_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    img.putpixel((0, 0), (0, 0, 255, 255))
    out = np.asarray(decode_image(_encode(img, "PNG")))
    assert out.shape == (8, 8, 3)
    assert tuple(out[4, 4]) == (255, 255, 255)
    assert tuple(out[0, 0]) == (0, 0, 255)


def test_palette_with_transparency_grayscale_and_cmyk():
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    out = np.asarray(decode_image(_encode(pal, "PNG", transparency=0)))
    assert tuple(out[0, 0]) == (255, 255, 255)
    gray = np.asarray(decode_image(_encode(Image.new("L", (4, 4), 100), "PNG")))
    assert gray.shape == (4, 4, 3) and tuple(gray[0, 0]) == (100, 100, 100)
    cmyk = decode_image(_encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.mode == "RGB"
    r, g, b = np.asarray(cmyk)[1, 1]
    assert r > 200 and g < 60 and b < 60


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = np.asarray(decode_image(buf.getvalue()))
    r, g, _ = out[3, 3]
    assert r > 200 and g < 50


@pytest.mark.parametrize("data", [b"", b"not an image", None])
def test_corrupt_bytes_raise_decode_error(data):
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_truncated_png_raises_decode_error():
    good = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")
    with pytest.raises(ImageDecodeError):
        decode_image(good[: len(good) // 2])


def bomb_png(side: int = 20_000) -> bytes:
    """A valid PNG of ``side`` x ``side`` black bilevel pixels: about 60 KB on disk, 400 M
    pixels (1.2 GB as RGB) once decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    squeeze = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + the row's bits
    idat = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_its_header():
    import tracemalloc

    data = bomb_png(8000)  # 64 M pixels: under PIL's limits, over ours
    assert len(data) < 50_000
    tracemalloc.start()
    with pytest.raises(ImageDecodeError, match="8000x8000 pixels is over the .*-pixel cap"):
        decode_image(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10_000_000, peak  # nothing decoded
    with pytest.raises(ImageDecodeError, match="pixel cap"):  # 400 M pixels: PIL's own refusal, reworded
        decode_image(bomb_png(20_000))
    assert decode_image(_encode(Image.new("RGB", (4000, 3000)), "PNG")).size == (4000, 3000)  # a 12 MP photo


def test_transforms_shape_and_dtype():
    img = Image.new("RGB", (40, 30), (9, 8, 7))
    e = eval_transform(img, 16)
    assert e.shape == (3, 16, 16) and e.dtype == np.uint8 and e[0, 0, 0] == 9


def test_animated_webp_gives_first_frame():
    frames = [Image.new("RGBA", (6, 6), c) for c in ((255, 0, 0, 255), (0, 255, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2
    assert tuple(np.asarray(decode_image(buf.getvalue()))[3, 3]) == (255, 0, 0)


@pytest.mark.parametrize("img, fmt, kw, expected", [
    (Image.new("RGBA", (4, 4), (0, 0, 255, 0)), "WEBP", {"lossless": True}, (255, 255, 255)),  # transparent WebP
    (Image.new("LA", (4, 4), (0, 0)), "PNG", {}, (255, 255, 255)),  # gray + alpha, transparent
    (Image.new("LA", (4, 4), (0, 255)), "PNG", {}, (0, 0, 0)),  # gray + alpha, opaque
    (Image.new("L", (4, 4), 7), "PNG", {"transparency": 7}, (255, 255, 255)),  # gray, transparent colour
    (Image.new("1", (4, 4), 1), "PNG", {}, (255, 255, 255)),  # bilevel
    (Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)), "PNG", {}, (156, 156, 156)),  # 16-bit: 40000 >> 8
    (Image.new("YCbCr", (4, 4), (76, 85, 255)), "JPEG", {}, None),  # JPEG in YCbCr: red
])
def test_every_mode_becomes_rgb_with_defined_pixels(img, fmt, kw, expected):
    out = decode_image(_encode(img, fmt, **kw))
    assert out.mode == "RGB" and out.size == (4, 4)
    pixel = tuple(int(v) for v in np.asarray(out)[1, 1])
    if expected is None:
        assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60, pixel
    else:
        assert pixel == expected


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (8, 4), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    assert decode_image(_encode(img, "JPEG", exif=exif.tobytes())).size == (4, 8)
