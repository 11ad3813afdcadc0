"""The images parity, benchmark accuracy and int8 calibration are measured on: a sample of every class."""

from __future__ import annotations

import csv

import numpy as np

from imagerec.export.parity import split_images
from imagerec.run import RunDir


def test_a_limited_sample_covers_every_class_not_the_manifests_first_rows(run_copy):
    run = RunDir(run_copy)
    with open(run.manifest, newline="") as fh:
        test_rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    labels = run.read_labels()
    first_class = labels.index(test_rows[0]["label"])
    per_class = sum(1 for r in test_rows if r["label"] == test_rows[0]["label"])
    assert per_class >= 2 and len(test_rows) > per_class
    assert {r["label"] for r in test_rows[:per_class]} == {test_rows[0]["label"]}  # grouped by class
    images, ys = split_images(run, "test", limit=per_class)
    assert len(images) == per_class
    assert len(set(ys.tolist())) > 1, f"a sample of {per_class} is all class {first_class}: the first rows"
    again, ys_again = split_images(run, "test", limit=per_class)
    assert np.array_equal(images, again) and np.array_equal(ys, ys_again)  # seeded: the same sample each time
    everything, _ = split_images(run, "test")
    assert len(everything) == len(test_rows)
