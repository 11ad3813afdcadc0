"""Every CLI default is read from ``imagerec.settings``, never typed a second time.

The test walks every option of every command behind ``imagerec.cli.app`` and sorts it into one of four tables:

* ``SAME``: the option's default must equal the settings default it stands for;
* ``CONSTANTS``: the option's default is a plain constant of ``imagerec.settings`` (``RUNTIME``);
* ``OVERRIDE``: the option defaults to ``None`` ("keep the config file's, else the setting's default"), so a
  literal default typed there would silently shadow the settings;
* ``CLI_ONLY``: options that are no setting (paths, output formats, switches of one command).

A new option must be added to one of them, and every settings field either has its flag here or is listed in
``NO_FLAG``. ``LIBRARY`` holds the library side to the same rule: the keyword defaults of the facade and the
functions behind it are the settings defaults too, so a default is written in ``imagerec.settings`` only.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import typer

from imagerec import settings
from imagerec.cli import app
from imagerec.settings import (
    AugmentConfig,
    BenchmarkSettings,
    CalibrateSettings,
    DataConfig,
    DriftSettings,
    EvaluateSettings,
    IssuesSettings,
    LRFindSettings,
    ModelConfig,
    PredictSettings,
    RaySettings,
    RecordSettings,
    ReviewSettings,
    ServeSettings,
    TrainConfig,
    VideoConfig,
    default_of,
)

SERVE_FLAGS = {
    "--host": "host", "--port": "port", "--api-key": "api_key", "--workers": "workers", "--max-batch": "max_batch",
    "--max-wait-ms": "max_wait_ms", "--max-queue": "max_queue", "--max-upload-mb": "max_upload_mb",
    "--max-files": "max_files", "--timeout-s": "timeout_s", "--cors-origin": "cors_origins",
    "--cors-allow-credentials": "cors_credentials", "--rate-limit": "rate_limit", "--decode-workers": "decode_workers",
    "--threshold": "threshold", "--stall-s": "stall_s", "--max-stalled": "max_stalled",
    "--drift-window": "drift_window", "--record": "record",
    "--record-images": "record_images", "--watch-s": "watch_s", "--review": "review", "--review-out": "review_out",
}  # fmt: skip

#: (command, flag) -> (settings class, field): the option's default is the field's default.
SAME: dict[tuple[str, str], tuple[type, str]] = {
    **{("serve", flag): (ServeSettings, name) for flag, name in SERVE_FLAGS.items()},
    ("data split", "--val"): (DataConfig, "val"),
    ("data split", "--test"): (DataConfig, "test"),
    ("data split", "--seed"): (TrainConfig, "seed"),
    **{
        (cmd, "--follow-symlinks"): (DataConfig, "follow_symlinks")
        for cmd in ("data inspect", "data clean", "data split")
    },
    ("evaluate", "--split"): (EvaluateSettings, "split"),
    ("evaluate", "--top-k"): (EvaluateSettings, "top_k"),
    ("compare", "--split"): (EvaluateSettings, "split"),
    ("compare", "--tolerance"): (EvaluateSettings, "gate_tolerance"),
    ("calibrate", "--target-accuracy"): (CalibrateSettings, "target_accuracy"),
    ("calibrate", "--split"): (CalibrateSettings, "split"),
    ("calibrate", "--ood-keep"): (CalibrateSettings, "ood_keep"),
    ("embed", "--batch-size"): (PredictSettings, "batch_size"),
    ("data issues", "--splits"): (IssuesSettings, "splits"),  # comma-joined on the command line
    ("data issues", "--limit"): (IssuesSettings, "limit"),
    ("data issues", "--max-p"): (IssuesSettings, "max_p_given"),
    **{("lr-find", "--" + name.replace("_", "-")): (LRFindSettings, name) for name in ("plot", "steps", "start_lr", "end_lr")},
    ("benchmark", "--rounds"): (BenchmarkSettings, "rounds"),
    ("monitor", "--window"): (DriftSettings, "window"),
    ("review", "--size"): (ReviewSettings, "size"),
    ("video", "--record-images"): (RecordSettings, "images"),
    **{("predict", "--" + name.replace("_", "-")): (PredictSettings, name) for name in ("top_k", "batch_size", "threshold")},
    **{(cmd, "--num-workers"): (RaySettings, "num_workers") for cmd in ("train", "predict")},
    **{(cmd, "--ray-address"): (RaySettings, "address") for cmd in ("train", "predict", "serve")},
    **{("serve", "--" + name.replace("_", "-")): (RaySettings, name) for name in ("replicas", "replica_cpus")},
}  # fmt: skip

#: (command, flag) -> the name of a plain constant of imagerec.settings that is the option's default.
CONSTANTS = {
    ("export", "--parity-images"): "PARITY_IMAGES",
    ("export", "--format"): "EXPORT_FORMAT",
    **{(cmd, "--runtime"): "RUNTIME" for cmd in ("predict", "video", "serve", "embed")},
}

TRAIN_FLAGS = {
    "--model": (ModelConfig, "name"), "--epochs": (TrainConfig, "epochs"), "--image-size": (DataConfig, "image_size"),
    "--channels": (DataConfig, "channels"), "--batch-size": (TrainConfig, "batch_size"),
    "--lr": (TrainConfig, "learning_rate"), "--optimizer": (TrainConfig, "optimizer"),
    "--schedule": (TrainConfig, "schedule"), "--augment": (AugmentConfig, "preset"),
    "--label-smoothing": (TrainConfig, "label_smoothing"), "--weight-decay": (TrainConfig, "weight_decay"),
    "--class-weights": (TrainConfig, "class_weights"), "--early-stopping": (TrainConfig, "early_stopping"),
    "--weights": (ModelConfig, "weights"), "--mixed-precision": (TrainConfig, "mixed_precision"),
    "--strategy": (TrainConfig, "strategy"), "--val": (DataConfig, "val"), "--test": (DataConfig, "test"),
    "--seed": (TrainConfig, "seed"), "--deterministic": (TrainConfig, "deterministic"),
    "--follow-symlinks": (DataConfig, "follow_symlinks"), "--task": (ModelConfig, "task"),
}  # fmt: skip
VIDEO_FLAGS = (
    "every",
    "fps",
    "smooth",
    "roi",
    "threshold",
    "top_k",
    "batch_size",
    "open_timeout_s",
    "read_timeout_s",
)

#: (command, flag) -> (settings class, field): the option defaults to None, so the settings default applies.
OVERRIDE: dict[tuple[str, str], tuple[type, str]] = {
    **{("train", flag): target for flag, target in TRAIN_FLAGS.items()},
    **{("video", "--" + name.replace("_", "-")): (VideoConfig, name) for name in VIDEO_FLAGS},
    **{
        ("lr-find", flag): TRAIN_FLAGS[flag] for flag in ("--model", "--image-size", "--batch-size", "--seed")
    },
    ("demo", "--epochs"): (TrainConfig, "epochs"),
}

#: Options that are no setting: what to read or write, output formats, one command's switches.
CLI_ONLY = {
    "": {"--version", "--verbose"},
    "data inspect": {"--json", "--workers"},
    "data clean": {"--quarantine", "--duplicates"},
    "data builtin": {"--limit"},
    "data split": {"--out"},
    "data issues": {"--json"},
    "train": {"--out", "--resume", "--force", "--ray", "--init"},
    "models": {"--image-size", "--channels"},
    "demo": {"--out"},
    "lr-find": set(),
    "evaluate": {"--data", "--json", "--tta", "--ood"},
    "embed": {"--out"},
    "report": set(),
    "explain": {"--out", "--class"},
    "compare": {"--json", "--gate", "--data"},
    "calibrate": {"--no-threshold"},
    "predict": {"--format", "--ray", "--out", "--tta"},
    "video": {"--source", "--out", "--jsonl", "--show", "--allow-any-source", "--json", "--record"},
    "export": {"--quantize", "--out"},
    "benchmark": {"--export", "--runtime"},
    "monitor": {"--run", "--out", "--json"},
    "serve": {"--log-level", "--models", "--ray", "--autoscale"},
    "review": {"--out", "--run", "--force"},
}  # fmt: skip

#: Settings fields that are deliberately no CLI flag (config file or Python only).
NO_FLAG = {
    DataConfig: {"resize", "cache", "max_invalid_ratio"},
    AugmentConfig: set(),
    ModelConfig: {"dropout", "fine_tune_layers", "bn_momentum"},
    TrainConfig: {"warmup_epochs"},
    ServeSettings: {"decode_threads", "max_sessions"},
    VideoConfig: {"reconnects", "live", "keep_images", "embeddings"},
    ReviewSettings: {"near_duplicate", "strata"},
    **{cls: set() for cls in (EvaluateSettings, CalibrateSettings, IssuesSettings, PredictSettings, LRFindSettings,
                              BenchmarkSettings)},
    RaySettings: {"autoscale"},  # serve --autoscale MIN,MAX: a string the command parses into the tuple
}  # fmt: skip


def _library():
    from imagerec import classifier
    from imagerec.distributed import ray
    from imagerec.evaluation import calibration, compare, evaluator, gate, issues, metrics
    from imagerec.export import benchmark
    from imagerec.training import learner, lr_find

    evaluate = {"split": (EvaluateSettings, "split"), "top_k": (EvaluateSettings, "top_k")}
    calibrate = {
        "split": (CalibrateSettings, "split"),
        "target_accuracy": (CalibrateSettings, "target_accuracy"),
    }
    find_issues = {
        "splits": (IssuesSettings, "splits"),
        "limit": (IssuesSettings, "limit"),
        "max_p_given": (IssuesSettings, "max_p_given"),
    }
    predict = {
        "top_k": (PredictSettings, "top_k"),
        "batch_size": (PredictSettings, "batch_size"),
        "threshold": (PredictSettings, "threshold"),
    }
    ray_workers = {"num_workers": (RaySettings, "num_workers"), "address": (RaySettings, "address")}
    range_test = {name: (LRFindSettings, name) for name in ("steps", "start_lr", "end_lr")}
    return {
        classifier.evaluate: evaluate, classifier.Classifier.evaluate: evaluate, evaluator.evaluate_classifier: evaluate,
        metrics.compute_metrics: {"top_k": (EvaluateSettings, "top_k")},
        classifier.compare: {"split": (EvaluateSettings, "split")},
        compare.compare_runs: {"split": (EvaluateSettings, "split")},
        gate.gate_runs: {"tolerance": (EvaluateSettings, "gate_tolerance")},
        classifier.Classifier.calibrate: calibrate, calibration.calibrate: calibrate,
        classifier.Classifier.label_issues: find_issues, issues.find_label_issues: find_issues,
        classifier.Classifier.predict: predict, ray.predict_with_ray: {**predict, **ray_workers},
        ray.train_with_ray: ray_workers,
        lr_find.lr_find: {**range_test, "plot": (LRFindSettings, "plot")}, learner.Learner.lr_find: range_test,
        benchmark.benchmark_run: {"rounds": (BenchmarkSettings, "rounds")},
        classifier.EMASmoother: {"alpha": (VideoConfig, "smooth")},
    }  # fmt: skip


#: Library functions whose keyword defaults are the constants of imagerec.settings.
LIBRARY_CONSTANTS = {
    "Classifier.load": ("runtime", "RUNTIME"),
    "Classifier.export": ("format", "EXPORT_FORMAT"),
}


def _commands(command, path: tuple[str, ...] = ()):
    """(path, click command) of the root and every command under it, sub-groups included."""
    yield " ".join(path), command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _options() -> dict[tuple[str, str], object]:
    """(command, longest flag) -> the click option, for every option of every command."""
    out = {}
    for path, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            if param.param_type_name == "option":
                out[(path, max(param.opts, key=len))] = param
    return out


OPTIONS = _options()


def _normal(value):
    if isinstance(value, str) and "," in value:  # --splits train,val
        return value.split(",")
    return list(value) if isinstance(value, tuple) else value


def test_every_option_is_sorted_into_one_table():
    known = (
        set(SAME) | set(CONSTANTS) | set(OVERRIDE) | {(c, f) for c, flags in CLI_ONLY.items() for f in flags}
    )
    assert not set(OPTIONS) - known, "new CLI options: add each to SAME, CONSTANTS, OVERRIDE or CLI_ONLY"
    assert not known - set(OPTIONS), "the tables name options that no command has"
    tables = [set(SAME), set(CONSTANTS), set(OVERRIDE)]
    assert sum(len(t) for t in tables) == len(set().union(*tables)), "an option is in two tables"


@pytest.mark.parametrize("key", sorted(SAME), ids=" ".join)
def test_option_default_is_the_settings_default(key):
    cls, name = SAME[key]
    assert _normal(OPTIONS[key].default) == _normal(default_of(cls, name)), (
        f"{key}: read the default from {cls.__name__}.{name} (cli/options.option), do not type it"
    )


@pytest.mark.parametrize("key", sorted(CONSTANTS), ids=" ".join)
def test_option_default_is_the_settings_constant(key):
    assert OPTIONS[key].default == getattr(settings, CONSTANTS[key])


@pytest.mark.parametrize("key", sorted(OVERRIDE), ids=" ".join)
def test_override_option_defaults_to_none_so_the_settings_default_applies(key):
    cls, name = OVERRIDE[key]
    assert name in {f.name for f in dataclasses.fields(cls)}
    assert OPTIONS[key].default is None, f"{key}: a typed default would shadow {cls.__name__}.{name}"


@pytest.mark.parametrize("cls", list(NO_FLAG), ids=lambda c: c.__name__)
def test_every_settings_field_has_a_flag_or_says_why_not(cls):
    flagged = {name for kind, name in (*SAME.values(), *OVERRIDE.values()) if kind is cls}
    names = {f.name for f in dataclasses.fields(cls)}
    assert not NO_FLAG[cls] & flagged, "a field listed in NO_FLAG has a flag"
    assert names - NO_FLAG[cls] == flagged, (
        f"{cls.__name__}: give each new field a flag, or list it in NO_FLAG"
    )


def test_a_typed_default_is_caught(monkeypatch):
    """The check above compares with the settings, so a different literal in an option fails it."""
    monkeypatch.setattr(OPTIONS[("serve", "--max-batch")], "default", 65)
    with pytest.raises(AssertionError, match="do not type it"):
        test_option_default_is_the_settings_default(("serve", "--max-batch"))


@pytest.mark.parametrize("function", list(_library()), ids=lambda f: f.__qualname__)
def test_library_defaults_are_the_settings_defaults(function):
    params = inspect.signature(function).parameters
    for param, (cls, name) in _library()[function].items():
        assert params[param].default == default_of(cls, name), (
            f"{function.__qualname__}({param}=...): use {cls.__name__}.{name} as the default, do not type it"
        )


@pytest.mark.parametrize("method", sorted(LIBRARY_CONSTANTS))
def test_library_defaults_are_the_settings_constants(method):
    from imagerec.classifier import Classifier

    param, constant = LIBRARY_CONSTANTS[method]
    function = getattr(Classifier, method.split(".")[1])
    assert inspect.signature(function).parameters[param].default == getattr(settings, constant)
