import json


def test_trained_run_is_complete(trained_run):
    for name in (
        "model.keras",
        "model.keras.sha256.json",
        "labels.json",
        "config.json",
        "manifest.csv",
        "history.csv",
        "metrics.json",
    ):
        assert (trained_run / name).exists(), name
    assert json.loads((trained_run / "labels.json").read_text()) == ["blue", "green", "red"]


def test_classifier_predicts_colours(trained_run):
    import numpy as np

    from imagefixtures import COLOURS, make_image
    from imagerec import Classifier

    clf = Classifier.load(trained_run)
    rng = np.random.default_rng(123)
    imgs = [make_image(COLOURS[c], rng) for c in ("red", "green", "blue")]
    preds = clf.predict(imgs, top_k=2)
    assert [p.label for p in preds] == ["red", "green", "blue"]
    assert len(preds[0].top_k) == 2
