"""The decode rules of ``imagerec.data.images`` (the one decode function of training, serving and video)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imagerec.data import images
from imagerec.data.images import (
    ALLOWED_FORMATS,
    IMAGE_EXTENSIONS,
    fit_size,
    header_size,
    load_image,
    open_image,
    sniff_format,
    to_array,
)
from imagerec.errors import ImageRejected


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    y, x = np.mgrid[0:30, 0:50]
    return Image.fromarray(np.stack([x * 5, y * 8, np.full_like(x, 90)], -1).astype(np.uint8), "RGB")


def test_public_constants_are_stable():
    assert ALLOWED_FORMATS == ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert set(ImageRejected._STATUS) == {
        "empty",
        "unsupported_format",
        "image_too_large",
        "corrupt",
        "truncated",
        "unreadable",
    }
    assert ImageRejected("unsupported_format", "x").status == 415
    assert ImageRejected("image_too_large", "x").status == 413


@pytest.mark.parametrize("fmt", ALLOWED_FORMATS)
def test_sniff_and_header_size_for_each_allowed_format(fmt, picture):
    data = _encode(picture, fmt)
    assert sniff_format(data[:16]) == fmt
    size = header_size(data, fmt)
    assert size in ((50, 30), None)  # WebP and TIFF are sized by Pillow's header parse instead
    if fmt in ("PNG", "GIF", "BMP", "JPEG"):
        assert size == (50, 30)
    assert open_image(data).size == (50, 30)


def test_progressive_and_exif_jpeg_header_size(picture):
    exif = Image.Exif()
    exif[0x010F] = "camera"
    data = _encode(picture, "JPEG", progressive=True, exif=exif.tobytes())
    assert header_size(data, "JPEG") == (50, 30)


def test_sniff_refuses_other_formats():
    for head in (b"", b"GIF8", b"%PDF-1.7", b"8BPS", b"RIFF\x00\x00\x00\x00WAVE", b"\x00\x00\x01\x00"):
        assert sniff_format(head) is None


def test_load_image_sources_agree(picture, tmp_path):
    data = _encode(picture, "PNG")
    path = tmp_path / "p.png"
    path.write_bytes(data)
    ref = load_image(path, (20, 20))
    for source in (
        str(path),
        data,
        bytearray(data),
        memoryview(data),
        io.BytesIO(data),
        picture,
        np.asarray(picture),
    ):
        assert np.array_equal(load_image(source, (20, 20)), ref)
    assert ref.shape == (20, 20, 3) and ref.dtype == np.uint8


def test_numpy_inputs_float_grey_rgba():
    grey = np.full((8, 8), 0.5, np.float32)
    assert load_image(grey)[0, 0].tolist() == [127, 127, 127]
    rgba = np.zeros((8, 8, 4), np.uint8)
    assert load_image(rgba)[0, 0].tolist() == [255, 255, 255]  # fully transparent -> the white background
    with pytest.raises(ImageRejected, match="not an image"):
        load_image(np.zeros((2, 2, 2, 2), np.uint8))


def test_channels_one_is_itu601_luma(picture):
    out = load_image(picture, channels=1)
    assert out.shape == (30, 50, 1)
    expected = np.asarray(picture.convert("L"))
    assert np.array_equal(out[..., 0], expected)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        to_array(picture, 2)


@pytest.mark.parametrize("policy", images.RESIZE_POLICIES)
def test_resize_policies(policy, picture):
    out = fit_size(picture, (20, 40), policy)
    assert out.size == (40, 20)
    arr = np.asarray(out)
    if policy == "pad":  # 50x30 into 40x20 keeps the aspect: bars on the left and right are the background
        assert (arr[:, 0] == 255).all() and (arr[:, -1] == 255).all()
    if policy == "crop":  # keeps the aspect and crops the top and bottom: no background
        assert not (arr == 255).all(axis=-1).any()
    with pytest.raises(ValueError, match="unknown resize policy"):
        fit_size(picture, (20, 40), "squash")


def test_first_frame_and_exif_rules_are_applied_by_open_image(picture):
    frames = [picture, picture.transpose(Image.Transpose.ROTATE_180)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = load_image(data)
    assert np.abs(first.astype(int) - load_image(_encode(picture, "GIF")).astype(int)).max() == 0
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180 to display
    rotated = _encode(picture.transpose(Image.Transpose.ROTATE_180), "PNG", exif=exif.tobytes())
    assert np.array_equal(load_image(rotated), np.asarray(picture))


def test_rejections_carry_a_stable_code_and_name_the_source(tmp_path):
    bad = tmp_path / "cat.jpg"
    bad.write_bytes(b"hello")
    with pytest.raises(ImageRejected) as err:
        load_image(bad)
    assert (
        err.value.code == "unsupported_format"
        and "cat.jpg" in str(err.value)
        and "decided by content" in str(err.value)
    )
    with pytest.raises(TypeError):
        load_image(12345)


def _png_variants() -> dict[str, bytes]:
    """Real pictures (skimage's photos, Fashion-MNIST-sized crops) saved as PNGs of every plain and non-plain kind."""
    from skimage import data as photos

    rgb = Image.fromarray(photos.astronaut()[::4, ::4])  # 128x128 RGB
    grey = Image.fromarray(photos.camera()[::8, ::8])  # 64x64 L
    small = grey.resize((28, 28))
    return {
        "rgb": _encode(rgb, "PNG"),
        "grey": _encode(grey, "PNG"),
        "grey-28": _encode(small, "PNG"),
        "grey-28-optimised": _encode(small, "PNG", optimize=True, dpi=(300, 300)),  # + pHYs
        "rgb-compress-9": _encode(rgb, "PNG", compress_level=9),
    }


@pytest.mark.parametrize("kind", ["rgb", "grey", "grey-28", "grey-28-optimised", "rgb-compress-9"])
def test_plain_pngs_decode_fast_to_exactly_pillows_pixels(kind):
    data = _png_variants()[kind]
    size = Image.open(io.BytesIO(data)).size[::-1]
    channels = 1 if kind.startswith("grey") else 3
    fast = images.decode_plain_png(data, size, channels)
    assert fast is not None, "a plain PNG takes the OpenCV path"
    pillow = load_image(io.BytesIO(data), size, channels)  # a file object: always Pillow
    assert fast.dtype == np.uint8 and fast.shape == pillow.shape == (*size, channels)
    np.testing.assert_array_equal(fast, pillow)
    np.testing.assert_array_equal(load_image(data, size, channels), pillow)  # load_image(bytes) takes it


def _with_chunk(png: bytes, kind: bytes, payload: bytes) -> bytes:
    """``png`` with one more chunk right after IHDR (CRC right)."""
    import struct
    import zlib

    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return png[:33] + chunk + png[33:]


def _many_chunks(png: bytes, count: int) -> bytes:
    for _ in range(count):
        png = _with_chunk(png, b"tIME", b"\x07\xea\x0c\x07\x10\x00\x00")
    return png


def _interlaced_flag(png: bytes) -> bytes:
    """``png`` with IHDR's interlace byte set (CRC recomputed): only the header claims Adam7."""
    import struct
    import zlib

    ihdr = png[12:28] + b"\x01"
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def test_only_plain_pngs_take_the_fast_path(picture):
    from tests.data import imagefactory as factory

    grey = picture.convert("L")
    rgb_png, grey_png = _encode(picture, "PNG"), _encode(grey, "PNG")
    others = {
        "other size": (rgb_png, (20, 20), 3),
        "grey asked as RGB": (grey_png, (30, 50), 3),
        "RGB asked as grey": (rgb_png, (30, 50), 1),
        "16-bit": (factory.png16(1), None, 1),
        "alpha": (factory.rgba_png(1), None, 3),
        "palette": (factory.palette_trns_png(1), None, 3),
        "interlaced": (_interlaced_flag(_encode(picture, "PNG")), (30, 50), 3),
        "gamma": (_with_chunk(_encode(picture, "PNG"), b"gAMA", (45455).to_bytes(4, "big")), (30, 50), 3),
        "exif": (_with_chunk(_encode(picture, "PNG"), b"eXIf", b"MM\0*\0\0\0\x08\0\0"), (30, 50), 3),
        # crafted to make the checks slow: they stay proportional to the picture, not to what is appended
        "100 time chunks": (_many_chunks(_encode(picture, "PNG"), 100), (30, 50), 3),
        "bigger than its pixels": (
            _with_chunk(_encode(picture, "PNG"), b"tIME", b"\0" * 20_000),
            (30, 50),
            3,
        ),
        "icc": (_encode(picture, "PNG", icc_profile=b"\0" * 200), (30, 50), 3),
        "corrupt": (factory.corrupt_png(1), None, 3),
        "truncated": (factory.truncated(rgb_png), (30, 50), 3),
        "JPEG": (_encode(picture, "JPEG"), (30, 50), 3),
    }
    for why, (data, size, channels) in others.items():
        assert images.decode_plain_png(data, size, channels) is None, why
    assert images.decode_plain_png(rgb_png, (30, 50), 3) is not None
    assert (
        images.decode_plain_png(_many_chunks(rgb_png, 3), (30, 50), 3) is not None
    )  # a few time stamps: plain
    with pytest.raises(ImageRejected) as info:
        load_image(factory.truncated(rgb_png), (30, 50), 3)
    assert info.value.code == "truncated"  # still worded by open_image
