"""``imagerec.settings``: one way to validate, one did-you-mean, defaults readable by name."""

from __future__ import annotations

import dataclasses

import pytest

from imagerec.errors import ImagerecError, did_you_mean
from imagerec.settings import (
    AugmentConfig,
    BenchmarkSettings,
    CalibrateSettings,
    DataConfig,
    EvaluateSettings,
    IssuesSettings,
    LRFindSettings,
    ModelConfig,
    PredictSettings,
    RaySettings,
    RunConfig,
    ServeSettings,
    TrainConfig,
    VideoConfig,
    default_of,
)
from imagerec.video.sources import VideoError

VERBS = [
    EvaluateSettings,
    CalibrateSettings,
    IssuesSettings,
    PredictSettings,
    LRFindSettings,
    BenchmarkSettings,
]
ALL = [
    DataConfig,
    AugmentConfig,
    ModelConfig,
    TrainConfig,
    RunConfig,
    ServeSettings,
    VideoConfig,
    *VERBS,
    RaySettings,
]


def test_did_you_mean_names_the_closest_choice_or_nothing():
    assert did_you_mean("epoch", ["epochs", "seed"]) == "; did you mean 'epochs'?"
    assert did_you_mean("zzz", ["epochs", "seed"]) == ""


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_defaults_are_valid_and_readable_by_name(cls):
    assert cls().validate() == cls()
    for name in (f.name for f in dataclasses.fields(cls)):
        assert default_of(cls, name) == getattr(cls(), name)


def test_default_of_an_unknown_field_says_did_you_mean():
    with pytest.raises(
        ImagerecError, match=r"ServeSettings has no setting 'max_bach'; did you mean 'max_batch'\?"
    ):
        default_of(ServeSettings, "max_bach")


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: RunConfig.from_dict({"trian": {}}), ImagerecError, r"unknown config key 'trian'; did you mean 'train'\?"),
        (lambda: RunConfig.from_dict({"train": {"epoch": 3}}), ImagerecError, r"unknown train key 'epoch'; did you mean"),
        (lambda: RunConfig().override("data", zzz=1), ImagerecError, r"unknown data key 'zzz'; expected one of cache, "),
        (lambda: ServeSettings().replace(max_bach=2), ImagerecError, r"unknown serve setting 'max_bach'; did you mean"),
        (lambda: VideoConfig.from_overrides(evry=2), VideoError, r"unknown video setting 'evry'; did you mean 'every'\?"),
    ],
)  # fmt: skip
def test_unknown_names_raise_with_a_did_you_mean(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        (ServeSettings(max_batch=0), ImagerecError, "--max-batch must be >= 1, got 0"),
        (ServeSettings(cors_origins=("*",), cors_credentials=True), ImagerecError, "cannot be combined"),
        (VideoConfig(every=2, fps=5), VideoError, "either every"),
        (VideoConfig(smooth=1.0), VideoError, r"smooth must be in \[0, 1\) \(0 = off, 0.6 = default\)"),
        (VideoConfig(roi=(0, 0)), VideoError, "roi must be x,y,w,h"),
        (RunConfig(train=TrainConfig(epochs=0)), ImagerecError, r"^--epochs must be >= 1, got 0$"),
        (TrainConfig(epochs=2.5), ImagerecError, r"^--epochs must be an integer >= 1, got 2.5$"),
        (
            TrainConfig(learning_rate=float("inf")),
            ImagerecError,
            r"^--lr \(learning_rate\) must be > 0, got inf$",
        ),
        (DataConfig(channels=2), ImagerecError, r"^--channels must be 1 or 3, got 2$"),
        (DataConfig(val=0.5, test=0.5), ImagerecError, r"^--val \+ --test must be < 1"),
        (ModelConfig(dropout=1.0), ImagerecError, r"^dropout must be in \[0, 1\), got 1.0$"),
        (ServeSettings(port=0), ImagerecError, r"^--port must be in \[1, 65535\], got 0$"),
        (LRFindSettings(start_lr=1.0, end_lr=0.1), ImagerecError, r"^--start-lr must be < --end-lr"),
        (IssuesSettings(limit=-1), ImagerecError, r"^--limit must be >= 0 \(0 = all\), got -1$"),
    ],
)
def test_validate_raises_the_first_failing_check(settings, error, message):
    with pytest.raises(error, match=message):
        settings.validate()


def test_replace_keeps_values_given_as_none_and_validates():
    base = VideoConfig(every=3)
    assert base.replace(every=None, smooth=0.5) == VideoConfig(every=3, smooth=0.5)
    assert RunConfig().override("train", epochs=None, seed=7).train == TrainConfig(seed=7)
    with pytest.raises(ImagerecError, match="--max-files must be >= 1"):
        ServeSettings().replace(max_files=0)


def test_run_config_round_trips_through_a_dict():
    config = RunConfig().override("model", name="mobilenetv3small").override("data", val=0.2)
    assert RunConfig.from_dict(config.to_dict()) == config


def test_max_body_is_max_upload_mb_in_bytes():
    assert ServeSettings(max_upload_mb=1.5).max_body == int(1.5 * 2**20)
