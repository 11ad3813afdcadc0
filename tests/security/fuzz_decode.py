"""Atheris (libFuzzer) harness for imagerec's one decode function (RELIABILITY B15): ``load_image`` on raw bytes.

Usage (any libFuzzer flag passes through; the defaults below are added when absent)::

    .venv/bin/python tests/security/fuzz_decode.py -max_total_time=60      # what .ci/fuzz.sh runs
    .venv/bin/python tests/security/fuzz_decode.py -runs=300 CORPUS_DIR    # tests/security/test_fuzz_decode.py

Fine: a ``uint8`` tensor of the requested shape, or ``ImageRejected`` with a known code. A crash (non-zero exit,
the input saved under ``-artifact_prefix``): any other exception, a wrong shape or dtype, or an exception that
``open_image`` had to swallow because it is not one of the errors a hostile file may raise in Pillow (its
"unexpected ... from Pillow" warning: the module docstring calls that a bug). ``-rss_limit_mb`` and ``-timeout``
catch memory and time blow-ups.

It lives next to the Hypothesis property it complements (``test_images.py``) because it seeds its corpus from the
same generators (``hostile_images.py``, ``tests/data/imagefactory.py``); it is not collected by pytest.

``IMAGEREC_FUZZ_PLANT=escape|swallowed`` plants a bug (an unexpected exception that leaves ``load_image``, or one
that ``open_image`` swallows) so the tests can prove the harness reports both kinds.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
DEFAULTS = {"-rss_limit_mb": "1024", "-timeout": "10", "-max_len": "16384", "-print_final_stats": "1"}
#: Lower than the server's 40 MP so each run stays fast; the bomb guard itself is tested in B8/B9.
MAX_PIXELS = 2_000_000

with atheris.instrument_imports(include=["PIL", "imagerec"]):
    from PIL import Image

    Image.init()  # import every Pillow plugin now, so they are instrumented for coverage feedback
    from imagerec.data import images
    from imagerec.errors import ImageRejected


class _Swallowed(logging.Handler):
    """Collects ``open_image``'s "unexpected <exception> from Pillow" warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


SWALLOWED = _Swallowed()
images.logger.addHandler(SWALLOWED)
images.logger.propagate = False


def _plant(kind: str) -> None:
    if kind == "escape":  # grey images hit a bug in the resize step, outside open_image's try block
        real_fit = images.fit_size

        def fit_size(img, *args, **kwargs):
            if img.mode == "L":
                raise RuntimeError("planted bug: grey image in fit_size")
            return real_fit(img, *args, **kwargs)

        images.fit_size = fit_size
    elif kind == "swallowed":  # palette images hit a bug inside open_image, which turns it into a rejection
        real_normalise = images._normalise_mode

        def _normalise_mode(img):
            if img.mode == "P":
                raise RuntimeError("planted bug: palette image in _normalise_mode")
            return real_normalise(img)

        images._normalise_mode = _normalise_mode
    elif kind:
        raise SystemExit(f"IMAGEREC_FUZZ_PLANT={kind!r}: expected 'escape' or 'swallowed'")


def test_one_input(data: bytes) -> None:
    # The call's other arguments come from the length, so every seed keeps its magic bytes at offset 0.
    channels = 1 if len(data) % 2 else 3
    resize = images.RESIZE_POLICIES[len(data) % 3]
    SWALLOWED.messages.clear()
    try:
        out = images.load_image(data, (16, 16), channels, resize, max_pixels=MAX_PIXELS)
    except ImageRejected as exc:
        if exc.code not in ImageRejected._STATUS:
            raise AssertionError(f"rejection with an unknown code {exc.code!r}: {exc}") from None
        out = None
    if SWALLOWED.messages:
        raise AssertionError(f"open_image swallowed an unexpected exception: {SWALLOWED.messages[0]}")
    if out is not None and (out.shape != (16, 16, channels) or out.dtype.name != "uint8"):
        raise AssertionError(f"bad tensor {out.shape} {out.dtype} for channels={channels} resize={resize}")


def seeds() -> dict[str, bytes]:
    """Small valid images of awkward kinds (modes, formats, EXIF, animation) plus a few near-misses."""
    sys.path[:0] = [str(HERE), str(HERE.parent / "data")]
    import hostile_images as hostile
    import imagefactory as factory

    ref = hostile.reference((24, 16))
    rgba = ref.convert("RGBA")
    grey = ref.convert("L")
    enc = hostile.encode
    corpus = {
        "rgb.png": enc(ref, "PNG"),
        "rgba.png": factory.rgba_png(1, 16),
        "palette_trns.png": factory.palette_trns_png(2, 16),
        "grey16.png": factory.png16(3, 16),
        "la.png": enc(grey.convert("LA"), "PNG"),
        "bilevel.png": enc(ref.convert("1"), "PNG"),
        "interlaced.png": enc(ref, "PNG", interlace=1),
        "animated.png": enc(ref, "PNG", save_all=True, append_images=[grey.convert("RGB")], duration=10),
        "baseline.jpg": factory.jpeg(4, 16),
        "progressive.jpg": enc(ref, "JPEG", progressive=True, quality=70),
        "grey.jpg": enc(grey, "JPEG"),
        "cmyk.jpg": factory.cmyk_jpeg(5),
        "exif_rotated.jpg": factory.exif_rotated_jpeg(6, 24, 16),
        "corrupt_exif.jpg": hostile.jpeg_corrupt_exif(),
        "animated.gif": factory.animated_gif(7, 3, 16),
        "gif87.gif": enc(ref.convert("P"), "GIF"),
        "lossy_alpha.webp": enc(rgba, "WEBP", quality=50),
        "lossless.webp": enc(ref, "WEBP", lossless=True),
        "animated.webp": enc(ref, "WEBP", save_all=True, append_images=[rgba], duration=10),
        "lzw.tif": enc(ref, "TIFF", compression="tiff_lzw"),
        "cmyk.tif": enc(ref.convert("CMYK"), "TIFF"),
        "grey16.tif": enc(Image.fromarray(factory.picture(8, 16)[:, :, 0].astype("uint16") * 257), "TIFF"),
        "float.tif": enc(grey.convert("F"), "TIFF"),
        "rgb.bmp": enc(ref, "BMP"),
        "bilevel.bmp": enc(ref.convert("1"), "BMP"),
        "bad_crc.png": hostile.png_bad_crc(),
        "no_eoi.jpg": hostile.jpeg_without_eoi(),
    }
    return corpus


def main(argv: list[str]) -> None:
    warnings.simplefilter("ignore")  # Pillow's warnings on odd files are not findings
    _plant(os.environ.get("IMAGEREC_FUZZ_PLANT", ""))
    flags = [a for a in argv[1:] if a.startswith("-")]
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    for key, value in DEFAULTS.items():
        if not any(f.startswith(key + "=") for f in flags):
            flags.append(f"{key}={value}")
    if not any(f.startswith("-artifact_prefix=") for f in flags):
        flags.append(f"-artifact_prefix={tempfile.mkdtemp(prefix='imagerec-fuzz-artifacts-')}/")
    if not dirs:
        dirs = [tempfile.mkdtemp(prefix="imagerec-fuzz-corpus-")]
    if not Path(dirs[0]).is_file():  # a file argument re-runs that one input (a crash to reproduce)
        Path(dirs[0]).mkdir(parents=True, exist_ok=True)
        for name, data in seeds().items():  # libFuzzer runs every seed first, then mutates them
            (Path(dirs[0]) / name).write_bytes(data)
    print(f"fuzz_decode: corpus {dirs[0]}, flags {' '.join(flags)}", flush=True)
    atheris.Setup([argv[0], *flags, *dirs], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
