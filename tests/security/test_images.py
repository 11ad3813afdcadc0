"""RELIABILITY B8-B11, B14, B15: hostile images give a typed ImageRejected, fast and small, never anything else."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from imagerec.data import images
from imagerec.data.images import load_image, open_image
from imagerec.errors import ImageRejected

from . import hostile_images as hostile

SIZE = (16, 16)


def _bounded_decode(bounded, tmp_path, blobs: dict[str, bytes]) -> dict:
    """Decode each blob in a fresh process; return {name: (outcome, seconds, peak RSS growth)}."""
    paths = {}
    for name, data in blobs.items():
        paths[name] = str(tmp_path / name)
        (tmp_path / name).write_bytes(data)
    return bounded(
        f"""
        from imagerec.data.images import load_image
        load_image({json.dumps(str(tmp_path / next(iter(blobs))))}) if False else None
        from PIL import Image
        Image.new("RGB", (8, 8)).save("/dev/null", "PNG")  # warm Pillow's plugins before measuring
        paths = {json.dumps(paths)}
        print(json.dumps({{k: measure(load_image, v, (16, 16)) for k, v in paths.items()}}))
        """
    )


# B8 ------------------------------------------------------------------------------------------------------
def test_b8_png_bomb_is_refused_fast_with_small_rss(bounded, tmp_path):
    bomb = hostile.png_bomb(30000, 30000)
    assert len(bomb) < 200_000  # a few hundred KB that would decode to 900 megapixels
    results = _bounded_decode(bounded, tmp_path, {"bomb.png": bomb})
    outcome, seconds, rss = results["bomb.png"]
    assert outcome == "ImageRejected:image_too_large"
    assert seconds < 1.0 and rss < 50 << 20, (seconds, rss)


def test_b8_pillow_guard_is_never_none_and_our_ceiling_is_lower():
    assert Image.MAX_IMAGE_PIXELS is not None
    assert images.DEFAULT_MAX_PIXELS <= Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # some other library switched the guard off
        with pytest.raises(ImageRejected) as err:
            load_image(hostile.png_bomb(12000, 12000))
        assert err.value.code == "image_too_large" and err.value.status == 413
        assert Image.MAX_IMAGE_PIXELS is not None  # and it is back on
    finally:
        Image.MAX_IMAGE_PIXELS = images.PILLOW_MAX_PIXELS


def test_b8_configurable_lower_ceiling():
    data = hostile.encode(hostile.reference((48, 32)), "PNG")
    assert load_image(data, max_pixels=48 * 32).shape == (32, 48, 3)
    with pytest.raises(ImageRejected, match="exceeds the limit of 1535"):
        load_image(data, max_pixels=48 * 32 - 1)


# B9 ------------------------------------------------------------------------------------------------------
def test_b9_huge_header_dimensions_are_refused_before_any_decode(bounded, tmp_path, monkeypatch):
    blobs = {"sof.jpg": hostile.jpeg_claiming(60000, 60000), "screen.gif": hostile.gif_claiming(32767, 32767)}
    assert all(len(b) < 1000 for b in blobs.values())
    for name, data in blobs.items():  # our header parse decides: Pillow is never asked to open them
        assert images.header_size(data, images.sniff_format(data)) in ((60000, 60000), (32767, 32767)), name
    opened = []
    monkeypatch.setattr(images.Image, "open", lambda *a, **k: opened.append(a))
    for data in blobs.values():
        with pytest.raises(ImageRejected) as err:
            load_image(data)
        assert err.value.code == "image_too_large"
    assert opened == []
    monkeypatch.undo()
    for outcome, seconds, rss in _bounded_decode(bounded, tmp_path, blobs).values():
        assert outcome == "ImageRejected:image_too_large" and seconds < 0.5 and rss < 20 << 20


# B10 -----------------------------------------------------------------------------------------------------
def test_b10_corpus_of_broken_files_gives_only_typed_rejections(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    corpus = {
        "empty.jpg": (b"", {"empty"}),
        "no_eoi.jpg": (hostile.jpeg_without_eoi(), {"truncated", "corrupt"}),
        "bad_crc.png": (hostile.png_bad_crc(), {"corrupt"}),
        "cut.png": (hostile.encode(hostile.reference(), "PNG")[:100], {"truncated", "corrupt"}),
        "cut.gif": (hostile.encode(hostile.reference(), "GIF")[:40], {"truncated", "corrupt"}),
        "cut.bmp": (hostile.encode(hostile.reference(), "BMP")[:80], {"truncated", "corrupt"}),
        "cut.webp": (hostile.encode(hostile.reference(), "WEBP")[:60], {"truncated", "corrupt"}),
        "cut.tiff": (hostile.encode(hostile.reference(), "TIFF")[:200], {"truncated", "corrupt"}),
        "magic_only.jpg": (b"\xff\xd8\xff\xe0", {"truncated", "corrupt"}),
        **{name: (data, {"unsupported_format"}) for name, data in hostile.non_image_corpus().items()},
    }
    for name, (data, codes) in corpus.items():
        path = tmp_path / name
        path.write_bytes(data)
        for source in (path, data, io.BytesIO(data)):
            with pytest.raises(ImageRejected) as err:
                load_image(source, SIZE)
            assert err.value.code in codes, (name, err.value.code, str(err.value))
            assert 400 <= err.value.status < 500


def test_b10_corrupt_exif_still_decodes_cleanly():
    out = load_image(hostile.jpeg_corrupt_exif())
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8


def test_b10_directories_devices_and_text_streams_are_unreadable(tmp_path):
    for source in (tmp_path, "/dev/null", tmp_path / "missing.png"):
        with pytest.raises(ImageRejected) as err:
            load_image(source)
        assert err.value.code in ("unreadable", "empty")
    with pytest.raises(ImageRejected, match="'rb' mode"):
        load_image(io.StringIO("not bytes"))


def test_b10_oversized_file_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(hostile.encode(hostile.reference(), "PNG") + bytes(5000))
    with pytest.raises(ImageRejected, match="larger than the limit of 1000 bytes") as err:
        open_image(path, max_bytes=1000)
    assert err.value.code == "image_too_large"


# B11 -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(hostile.non_image_corpus()))
def test_b11_format_is_decided_by_content_not_name(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(hostile.non_image_corpus()[name])
    with pytest.raises(ImageRejected) as err:
        load_image(path)
    assert (err.value.code, err.value.status) == ("unsupported_format", 415)


def test_b11_allowed_formats_decode_whatever_their_name(tmp_path):
    ref = hostile.reference()
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"):
        path = tmp_path / f"{fmt.lower()}_renamed.png"
        path.write_bytes(hostile.encode(ref, fmt))
        assert load_image(path, SIZE).shape == (16, 16, 3), fmt


# B14 -----------------------------------------------------------------------------------------------------
def test_b14_animated_gif_with_thousands_of_frames_decodes_first_frame_only():
    data = hostile.animated_gif(frames=3000)
    assert Image.open(io.BytesIO(data)).n_frames == 3000
    start = time.perf_counter()
    out = load_image(data)
    elapsed = time.perf_counter() - start
    assert out.shape == (16, 16, 3)  # 3-D: never a stack of frames
    assert tuple(out[0, 0]) == (255, 0, 0)  # frame 0 is red, every other frame is green
    assert elapsed < 0.5, elapsed


def test_b14_animated_png_and_webp_give_the_first_frame():
    red, green = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 255, 0))
    for fmt in ("PNG", "WEBP"):
        data = hostile.encode(red, fmt, save_all=True, append_images=[green] * 50, duration=10, lossless=True)
        out = load_image(data)
        assert out.shape == (16, 16, 3) and tuple(out[8, 8]) == (255, 0, 0), fmt


# B15 -----------------------------------------------------------------------------------------------------
def _seeds() -> list[bytes]:
    ref = hostile.reference((12, 10))
    rgba = ref.convert("RGBA")
    return [
        hostile.encode(ref, "PNG"),
        hostile.encode(ref, "JPEG", quality=80),
        hostile.encode(ref, "JPEG", progressive=True),
        hostile.encode(ref, "GIF"),
        hostile.encode(ref, "BMP"),
        hostile.encode(rgba, "WEBP"),
        hostile.encode(ref, "TIFF", compression="tiff_lzw"),
        hostile.encode(rgba, "PNG"),
        hostile.encode(ref.convert("P"), "PNG", transparency=0),
    ]


SEEDS = _seeds()


@st.composite
def mutated_images(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "cut":
            data = data[:pos]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
    return bytes(data)


def _decode_or_reject(data: bytes) -> None:
    try:
        out = load_image(data, SIZE)
    except ImageRejected as exc:
        assert exc.code in ImageRejected._STATUS
        return
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


_FUZZ = settings(
    max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@_FUZZ
@given(st.binary(max_size=4096))
def test_b15_arbitrary_bytes_give_a_tensor_or_a_rejection(data):
    _decode_or_reject(data)


@_FUZZ
@given(
    st.sampled_from(list(images._MAGIC)).flatmap(lambda m: st.binary(max_size=2048).map(lambda b: m[0] + b))
)
def test_b15_bytes_behind_a_valid_magic_give_a_tensor_or_a_rejection(data):
    _decode_or_reject(data)


@_FUZZ
@given(mutated_images())
def test_b15_mutated_valid_images_give_a_tensor_or_a_rejection(data):
    _decode_or_reject(data)


@pytest.mark.slow
def test_b15_long_fuzz_run_has_no_rss_creep(bounded):
    """10k mutated images in one process: only tensors or rejections, and RSS flat after warm-up."""
    result = bounded(
        """
        import random, sys
        sys.path.insert(0, "tests")
        from security.test_images import SEEDS
        from imagerec.data.images import load_image
        from imagerec.errors import ImageRejected
        rng = random.Random(0)
        rss = []
        for i in range(10_000):
            data = bytearray(rng.choice(SEEDS))
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(data)) if data else 0
                if data and rng.random() < 0.7:
                    data[pos] = rng.randrange(256)
                else:
                    del data[pos : pos + rng.randint(1, 32)]
            try:
                load_image(bytes(data), (16, 16))
            except ImageRejected:
                pass
            if i % 1000 == 999:
                rss.append(_rss("VmRSS:"))
        print(json.dumps(rss))
        """,
        timeout=900,
    )
    assert result[-1] - result[1] < 20 << 20, result
