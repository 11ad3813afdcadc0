"""RELIABILITY B12-B13: EXIF orientation and awkward modes give the documented tensor, identical in training
(``decode_all`` with a ``PipelineSpec``) and serving (``Classifier.preprocess`` on paths and bytes)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from imagerec.data.images import load_image
from imagerec.data.pipeline import PipelineSpec, decode_all

from . import hostile_images as hostile

# EXIF orientation -> how the stored pixels relate to the upright picture (the stored image is the upright one
# transformed by the inverse of what a viewer applies: EXIF 2.32, tag 0x0112).
STORE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # the viewer rotates 90 degrees clockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,  # the viewer rotates 90 degrees counter-clockwise
}
S = 32


def _jpeg_with_orientation(upright: Image.Image, orientation: int) -> bytes:
    stored = upright if orientation == 1 else upright.transpose(STORE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return hostile.encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def _train_and_serve(
    tmp_path, blobs: dict[str, bytes], clf=None, channels: int = 3
) -> tuple[np.ndarray, ...]:
    paths = []
    for name, data in blobs.items():
        paths.append(str(tmp_path / name))
        (tmp_path / name).write_bytes(data)
    train = decode_all(paths, PipelineSpec(image_size=S, channels=channels), workers=1)
    serve = np.stack([load_image(d, (S, S), channels) for d in blobs.values()])
    outs = [train, serve]
    if clf is not None:
        outs.append(np.stack([clf.preprocess(p) for p in paths]))
        outs.append(np.stack([clf.preprocess(d) for d in blobs.values()]))
    return tuple(outs)


def test_b12_exif_orientations_2_to_8_match_the_reference_in_training_and_serving(tmp_path, trained_run):
    from imagerec import Classifier

    clf = Classifier.load(trained_run)
    assert clf.image_size == S and clf.channels == 3
    upright = hostile.reference((48, 32))
    blobs = {f"o{o}.jpg": _jpeg_with_orientation(upright, o) for o in range(1, 9)}
    train, serve, serve_path, serve_bytes = _train_and_serve(tmp_path, blobs, clf)
    assert (
        np.array_equal(train, serve)
        and np.array_equal(train, serve_path)
        and np.array_equal(train, serve_bytes)
    )
    ref = train[0].astype(int)
    for i, o in enumerate(range(2, 9), start=1):
        diff = np.abs(train[i].astype(int) - ref)
        assert diff.mean() < 3 and np.percentile(diff, 99) < 24, (o, diff.mean())
        # without the EXIF rotation it would be far off: the test can fail
        ignored = load_image(upright.transpose(STORE[o]), (S, S)).astype(int)
        assert np.abs(ignored - ref).mean() > 20, o


def _png16_rgb(arr: np.ndarray) -> bytes:
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _awkward() -> dict[str, tuple[bytes, np.ndarray, int]]:
    """name -> (file bytes, expected uint8 (32, 32, 3) tensor at image_size None, tolerance)."""
    rng = np.random.default_rng(3)
    ref = hostile.reference((S, S))
    ref_arr = np.asarray(ref)
    grey16 = rng.integers(0, 65536, (S, S), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (S, S, 3), dtype=np.uint16)
    rgba = np.dstack([ref_arr, np.tile(np.linspace(0, 255, S, dtype=np.uint8), (S, 1))])
    alpha = rgba[..., 3:].astype(float) / 255
    on_white = np.rint(ref_arr * alpha + 255 * (1 - alpha)).astype(np.uint8)
    palette = Image.fromarray((np.arange(S * S).reshape(S, S) % 4).astype(np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * 756)
    pal_expected = np.array([[255, 255, 255], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)[
        np.asarray(palette)
    ]
    bits = Image.fromarray(rng.integers(0, 2, (S, S)).astype(bool))
    grey = ref.convert("L")
    rep = lambda a: np.repeat(a[..., None], 3, axis=2)  # noqa: E731
    return {
        "cmyk.jpg": (hostile.encode(ref.convert("CMYK"), "JPEG", quality=95), ref_arr, 6),
        "grey16.png": (
            hostile.encode(Image.fromarray(grey16), "PNG"),
            rep((grey16 >> 8).astype(np.uint8)),
            0,
        ),
        "grey16.tiff": (
            hostile.encode(Image.fromarray(grey16), "TIFF"),
            rep((grey16 >> 8).astype(np.uint8)),
            0,
        ),
        "rgb16.png": (_png16_rgb(rgb16), (rgb16 >> 8).astype(np.uint8), 0),
        "rgba.png": (hostile.encode(Image.fromarray(rgba, "RGBA"), "PNG"), on_white, 1),
        "la.png": (hostile.encode(Image.fromarray(rgba, "RGBA").convert("LA"), "PNG"), None, 0),
        "palette_trns.png": (hostile.encode(palette, "PNG", transparency=0), pal_expected, 0),
        "palette_trns.gif": (hostile.encode(palette, "GIF", transparency=0), pal_expected, 0),
        "bits.png": (hostile.encode(bits, "PNG"), rep(np.asarray(bits).astype(np.uint8) * 255), 0),
        "grey.jpg": (hostile.encode(grey, "JPEG", quality=95), rep(np.asarray(grey)), 4),
        "rgba.webp": (hostile.encode(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True), on_white, 1),
    }


AWKWARD = _awkward()


@pytest.mark.parametrize("name", sorted(AWKWARD))
def test_b13_awkward_modes_give_the_documented_tensor(name):
    data, expected, tol = AWKWARD[name]
    out = load_image(data)
    assert out.shape == (S, S, 3) and out.dtype == np.uint8
    if expected is not None:
        diff = np.abs(out.astype(int) - expected.astype(int))
        assert diff.mean() <= max(tol, 0.5) and (tol > 1 or diff.max() <= tol), (
            name,
            diff.mean(),
            diff.max(),
        )
    grey_out = load_image(data, channels=1)
    assert grey_out.shape == (S, S, 1)


def test_b13_awkward_modes_are_identical_in_training_and_serving(tmp_path, trained_run):
    from imagerec import Classifier

    clf = Classifier.load(trained_run)
    blobs = {name: data for name, (data, _, _) in AWKWARD.items()}
    train, serve, serve_path, serve_bytes = _train_and_serve(tmp_path, blobs, clf)
    for i, name in enumerate(blobs):
        assert np.array_equal(train[i], serve[i]), name
        assert np.array_equal(train[i], serve_path[i]) and np.array_equal(train[i], serve_bytes[i]), name
    (tmp_path / "g").mkdir()
    grey_train, grey_serve = _train_and_serve(tmp_path / "g", blobs, channels=1)
    assert np.array_equal(grey_train, grey_serve)
