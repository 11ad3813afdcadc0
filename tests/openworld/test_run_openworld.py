"""Embeddings and the out-of-distribution answer on a real trained run: library, predict, embed and evaluate."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from imagefixtures import COLOURS, make_image, run_cli
from imagerec.classifier import Classifier
from imagerec.prediction import UNKNOWN


@pytest.fixture(scope="module")
def calibrated_run(trained_run, tmp_path_factory):
    """A copy of the session's run, calibrated (temperature, thresholds, OOD threshold)."""
    run = tmp_path_factory.mktemp("openworld") / "run"
    shutil.copytree(trained_run, run)
    Classifier.load(run, runtime="keras").calibrate()
    return run


def _photos(n: int = 12) -> list[np.ndarray]:
    """Crops of real photographs: nothing like the flat colour classes."""
    from skimage import data

    rng = np.random.default_rng(3)
    photo = data.astronaut()
    crops = []
    for _ in range(n):
        y, x = rng.integers(0, 400, 2)
        crops.append(np.asarray(Image.fromarray(photo[y : y + 96, x : x + 96]).resize((32, 32))))
    return crops


def test_training_writes_the_reference(trained_run):
    clf = Classifier.load(trained_run, runtime="keras")
    assert (trained_run / "reference.npz").is_file()
    assert clf.reference.class_counts.sum() > 0
    assert clf.reference.means.shape[0] == len(clf.labels)


def test_embed_is_the_normalised_penultimate_layer(trained_run):
    import keras

    clf = Classifier.load(trained_run, runtime="keras")
    rng = np.random.default_rng(0)
    images = [make_image(c, rng) for c in COLOURS.values()]
    emb = clf.embed(images)
    model = clf.keras_model()
    features = keras.Model(model.inputs, model.get_layer("logits").input)(np.stack(images).astype(np.float32))
    features = np.asarray(features, np.float32)
    np.testing.assert_allclose(emb, features / np.linalg.norm(features, axis=1, keepdims=True), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_tta_embedding_is_the_renormalised_mean_of_both_views(trained_run):
    clf = Classifier.load(trained_run, runtime="keras")
    image = make_image(COLOURS["red"], np.random.default_rng(1))
    image[:, :6] = 255  # asymmetric: the mirror is another input
    both = clf.embed([image, image[:, ::-1].copy()])
    mean = both.sum(0) / np.linalg.norm(both.sum(0))
    try:
        tta = Classifier.load(trained_run, runtime="keras", tta=True)
    except Exception as exc:  # the fixture's augmentation may be flip-free: TTA is refused then
        pytest.skip(str(exc))
    np.testing.assert_allclose(tta.embed(image)[0], mean, rtol=1e-4, atol=1e-5)


def test_calibrate_keeps_95_percent_of_val_and_foreign_photos_are_unknown(calibrated_run):
    record = json.loads((calibrated_run / "calibration.json").read_text())
    assert record["ood_keep"] == 0.95 and record["ood_threshold"] > 0
    clf = Classifier.load(calibrated_run, runtime="keras")
    rng = np.random.default_rng(5)
    known = clf.predict([make_image(c, rng) for c in COLOURS.values() for _ in range(4)], threshold=None)
    foreign = clf.predict(_photos(), threshold=None)
    assert all(p.ood_score is not None for p in known + foreign)
    assert np.median([p.ood_score for p in foreign]) > record["ood_threshold"] > np.median([p.ood_score for p in known])
    rejected = [p for p in foreign if p.label == UNKNOWN]
    assert len(rejected) >= len(foreign) * 3 // 4
    assert {p.reason for p in rejected} <= {"low_confidence", "out_of_distribution"}
    assert "out_of_distribution" in {p.reason for p in rejected}
    row = foreign[0].to_dict()
    assert row["ood_score"] == pytest.approx(foreign[0].ood_score, abs=1e-5)
    # threshold 0 turns every 'unknown' off, the OOD one included
    assert all(p.label != UNKNOWN for p in clf.predict(_photos(), threshold=0))


def test_predict_json_lines_carry_the_ood_score(calibrated_run, tmp_path, capsys):
    for i, photo in enumerate(_photos(4)):
        Image.fromarray(photo).save(tmp_path / f"photo{i}.png")
    Image.fromarray(make_image(COLOURS["blue"], np.random.default_rng(2))).save(tmp_path / "blue.png")
    code, out, _ = run_cli(capsys, "predict", str(calibrated_run), str(tmp_path), "--format", "json", "--runtime", "keras")
    assert code == 0
    rows = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line) for line in out.splitlines()}
    # the CLI's lines are the library's answers, the OOD score and the reason included
    names = sorted(rows)
    library = Classifier.load(calibrated_run, runtime="keras").predict([str(tmp_path / n) for n in names])
    for name, answer in zip(names, library, strict=True):
        assert rows[name]["label"] == answer.label and rows[name].get("reason") == answer.reason
        assert rows[name]["ood_score"] == pytest.approx(answer.ood_score, abs=1e-5)
    # (the tiny run's OOD threshold keeps 95% of ~9 val images: a clear test image may still fall above it, and one
    # crop of a photograph may look like a colour to it; test_calibrate_... checks the rates on 12 crops)
    assert rows["blue.png"]["top_k"][0]["label"] == "blue"
    photos = [rows[f"photo{i}.png"] for i in range(4)]
    assert np.median([p["ood_score"] for p in photos]) > rows["blue.png"]["ood_score"]
    unknown = [p for p in photos if p["label"] == UNKNOWN]
    assert unknown and {p["reason"] for p in unknown} <= {"low_confidence", "out_of_distribution"}


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_embed_cli_writes_vectors_and_names_bad_files(trained_run, tmp_path, capsys, suffix):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i, colour in enumerate(COLOURS.values()):
        Image.fromarray(make_image(colour, rng)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / f"vectors{suffix}"
    code, stdout, err = run_cli(capsys, "embed", str(trained_run), str(folder), "--out", str(out), "--runtime", "keras")
    assert code == 1 and "broken.png" in err and "1 of 4 input(s) failed" in err
    expected = Classifier.load(trained_run, runtime="keras").embed([str(folder / f"{i}.png") for i in range(3)])
    if suffix == ".npy":
        vectors = np.load(out, allow_pickle=False)
        paths = out.with_suffix(".paths.txt").read_text().split()
        assert [p.rsplit("/", 1)[-1] for p in paths] == ["0.png", "1.png", "2.png"]
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out).to_pydict()
        vectors = np.array(table["embedding"], np.float32)
        assert len(table["ood_score"]) == 3 and all(s >= 0 for s in table["ood_score"])
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)
    assert "wrote 3 embeddings" in stdout


def test_embed_cli_refuses_another_suffix(trained_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "embed", str(trained_run), str(tmp_path), "--out", str(tmp_path / "v.csv"))
    assert code == 2 and "write a .npy or a .parquet" in err


def test_evaluate_ood_reports_both_scores_and_draws_them(calibrated_run, tmp_path, capsys):
    folder = tmp_path / "foreign"
    folder.mkdir()
    for i, crop in enumerate(_photos(30)):
        Image.fromarray(crop).save(folder / f"{i}.png")
    (folder / "notes.png").write_text("not an image")
    code, out, _ = run_cli(capsys, "evaluate", str(calibrated_run), "--ood", str(folder), "--json")
    assert code == 0
    ood = json.loads(out)["ood"]
    assert ood["num_images"] == 30 and ood["skipped_images"] == 1
    assert set(ood) >= {"auroc", "fpr_at_95_tpr", "msp_auroc", "msp_fpr_at_95_tpr", "method"}
    assert ood["auroc"] > 0.9
    assert (calibrated_run / "evaluation" / "ood_scores.png").stat().st_size > 1000
    assert "Out-of-distribution scores" in (calibrated_run / "evaluation" / "report.html").read_text()
