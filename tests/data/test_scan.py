"""Validation by decoding, and exact / near duplicate detection (``imagerec data inspect``)."""

from __future__ import annotations

import json
from pathlib import Path

import imagefactory as f
import numpy as np
import pytest
from imagefactory import cli_fixture, messy_fixture  # noqa: F401 - fixtures "cli", "messy"
from PIL import Image

from imagerec.data.scan import NEAR_TOLERANCE, check_file, scan_dataset
from imagerec.data.sources import Sample


def test_messy_folder_inspect_json_through_the_cli(messy):
    root, expected = messy
    proc = f.run_cli_subprocess("data", "inspect", root, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["num_images"] == expected["num_images"] == 18
    assert report["classes"] == expected["classes"]
    assert sorted(item["path"] for item in report["invalid"]) == expected["invalid"]
    assert report["duplicates"] == expected["duplicates"]
    assert report["near_duplicates"] == expected["near_duplicates"]
    assert report["label_conflicts"] == expected["label_conflicts"]
    assert report["ignored"] == expected["ignored"] == 4
    assert report["ignored_files"] == expected["ignored_files"]
    assert report["empty_classes"] == ["bird"]
    assert report["formats"] == {"PNG": 10, "JPEG": 4, "GIF": 1, "BMP": 1, "TIFF": 1, "WEBP": 1}


def test_messy_folder_rich_table_lists_classes_invalid_files_and_groups(messy, cli):
    root, _ = messy
    code, out, err = cli("data", "inspect", root)
    assert code == 0, err
    for text in ("bird", "cat", "dog", "truncated.png", "image_too_large", "notes.jpg", "shared copy.png"):
        assert text in out
    assert "near-duplicates" in out and "near_src_small.png" in out
    assert "empty classes" in out


BAD_FILES = {
    "zero.jpg": (b"", ("empty",)),
    "text.jpg": (f.TEXT_AS_JPEG, ("unsupported_format",)),
    "truncated.png": (f.truncated(f.png(1, 96)), ("truncated",)),
    "truncated.jpg": (f.truncated(f.jpeg(1, 96), 0.6), ("truncated",)),
    "corrupt.png": (f.corrupt_png(), ("corrupt", "truncated")),  # random chunk lengths may run past the end
    "bomb.png": (f.bomb_png(), ("image_too_large",)),
    "html.png": (b"<html><body>not an image</body></html>", ("unsupported_format",)),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_each_bad_file_kind_is_listed_with_its_reason(tmp_path: Path, name: str):
    data, codes = BAD_FILES[name]
    path = f.write(tmp_path / name, data)
    result = check_file(Sample(str(path), "x"))
    assert isinstance(result, dict), result
    assert result["path"] == str(path)
    assert result["reason"].split(":")[0] in codes, result["reason"]


GOOD_FILES = {
    "cmyk.jpg": (f.cmyk_jpeg(1), (64, 64), "CMYK"),
    "sixteen.png": (f.png16(2), (48, 48), "I;16"),
    "rgba.png": (f.rgba_png(3), (48, 48), "RGBA"),
    "palette.png": (f.palette_trns_png(4), (48, 48), "P"),
    "anim.gif": (f.animated_gif(5), (40, 40), "P"),
    "rotated.jpg": (f.exif_rotated_jpeg(6, 64, 40), (40, 64), "RGB"),  # decoded upright: portrait
    "photo.webp": (f.encode(f.picture(7), "WEBP"), (64, 64), "RGB"),
    "scan.tif": (f.encode(f.picture(8), "TIFF"), (64, 64), "RGB"),
}


@pytest.mark.parametrize("name", sorted(GOOD_FILES))
def test_each_accepted_mode_decodes(tmp_path: Path, name: str):
    data, size, mode = GOOD_FILES[name]
    result = check_file(Sample(str(f.write(tmp_path / name, data)), "x"))
    assert not isinstance(result, dict), result
    assert (result.width, result.height) == size
    assert result.mode == mode


def test_near_duplicates_are_re_encodings_not_lookalikes(tmp_path: Path):
    src = f.picture(1, 128)
    f.write(tmp_path / "a" / "src.png", f.encode(src))
    f.write(tmp_path / "a" / "q60.jpg", f.encode(src, "JPEG", quality=60))
    f.write(
        tmp_path / "a" / "half.png", f.encode(Image.fromarray(src).resize((64, 64), Image.Resampling.LANCZOS))
    )
    # a different picture, and the same picture slightly brightened (a different photo, not a re-encode)
    f.write(tmp_path / "b" / "other.png", f.png(2, 128))
    brighter = np.clip(src.astype(int) + 12, 0, 255).astype(np.uint8)
    f.write(tmp_path / "b" / "brighter.png", f.encode(brighter))
    result = scan_dataset(tmp_path)
    assert result.near_duplicates == [
        sorted(str(tmp_path / "a" / n) for n in ("half.png", "q60.jpg", "src.png"))
    ]
    assert result.duplicates == []


def test_blank_images_of_one_colour_are_one_group_not_many(tmp_path: Path):
    for i, size in enumerate((16, 24, 32)):
        f.write(tmp_path / "c" / f"white{i}.png", f.encode(np.full((size, size), 255, np.uint8)))
        f.write(tmp_path / "c" / f"black{i}.png", f.encode(np.zeros((size, size), np.uint8)))
    result = scan_dataset(tmp_path)
    assert len(result.near_duplicates) == 2
    assert sorted(len(g) for g in result.near_duplicates) == [3, 3]
    assert NEAR_TOLERANCE < 10


def test_parallel_scan_matches_serial_scan(tmp_path: Path):
    rng = np.random.default_rng(0)
    for i in range(300):
        f.write(
            tmp_path / f"k{i % 3}" / f"{i}.png", f.encode(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        )
    f.write(tmp_path / "k0" / "bad.png", b"")
    serial = scan_dataset(tmp_path, workers=1)
    parallel = scan_dataset(tmp_path, workers=2)
    assert serial.to_dict() == parallel.to_dict()
    assert serial.to_dict()["num_images"] == 300 and len(serial.invalid) == 1


def test_source_files_are_untouched_by_a_scan(messy):
    root, _ = messy
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    scan_dataset(root)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_csv_row_naming_a_missing_file_is_invalid_not_fatal(tmp_path: Path):
    f.write(tmp_path / "a.png", f.png(1))
    f.write(tmp_path / "b.png", f.png(2))
    (tmp_path / "labels.csv").write_text("path,label\na.png,x\nb.png,y\ngone.png,y\n")
    report = scan_dataset(tmp_path / "labels.csv").to_dict()
    assert report["num_images"] == 2 and report["classes"] == {"x": 1, "y": 1}
    assert [i["path"] for i in report["invalid"]] == [str(tmp_path / "gone.png")]
    assert report["invalid"][0]["reason"].startswith("unreadable:")


def test_near_duplicate_search_equals_brute_force():
    """The KD-tree prefilter is exact: the same groups as comparing every pair of signatures."""
    from itertools import combinations

    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from imagerec.data.scan import THUMB_BYTES, ScannedImage, find_duplicates

    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (300, THUMB_BYTES)).astype(np.float32)
    # planted pairs at RMS distances around the tolerance, some just inside and some just outside
    near = (
        base[:60] + rng.normal(0, 1, (60, THUMB_BYTES)) * np.linspace(0.5, 1.5, 60)[:, None] * NEAR_TOLERANCE
    )
    thumbs = np.clip(np.rint(np.concatenate([base, near])), 0, 255).astype(np.uint8)
    images = [
        ScannedImage(f"{i}.png", "a", None, f"{i:064x}", 8, 8, "PNG", "L", thumbs[i].tobytes())
        for i in range(len(thumbs))
    ]
    t = thumbs.astype(np.float64)
    pairs = [
        (i, j)
        for i, j in combinations(range(len(t)), 2)
        if np.sqrt(((t[i] - t[j]) ** 2).mean()) <= NEAR_TOLERANCE
    ]
    assert 5 < len(pairs) < 60  # the planted distances straddle the tolerance
    rows, cols = zip(*pairs, strict=True)
    _, comp = connected_components(coo_matrix(([1] * len(pairs), (rows, cols)), shape=(len(t), len(t))))
    groups = {}
    for i, c in enumerate(comp):
        groups.setdefault(c, []).append(f"{i}.png")
    expected = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    assert find_duplicates(images)[1] == expected


def test_grey_signature_shortcut_equals_the_ycbcr_route():
    """Grey images skip the YCbCr conversion: the signature must equal Pillow's conversion of the same image."""
    from imagerec.data.scan import thumbnail

    rng = np.random.default_rng(4)
    for shape in [(28, 28), (13, 40), (64, 9)]:
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        luma, blue, red = img.convert("YCbCr").split()
        box = Image.Resampling.BOX
        expected = (
            luma.resize((8, 8), box).tobytes()
            + blue.resize((4, 4), box).tobytes()
            + red.resize((4, 4), box).tobytes()
        )
        assert thumbnail(img) == expected
