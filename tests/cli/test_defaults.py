"""Every CLI default is read from ``imagerec.settings``, never typed a second time.

The test walks every option of every command behind ``imagerec.cli.app`` and sorts it into one of three tables:

* ``SAME``: the option's default must equal the settings default it stands for;
* ``OVERRIDE``: the option defaults to ``None`` ("keep the config file's, else the setting's default"), so a
  literal default typed there would silently shadow the settings;
* ``CLI_ONLY``: options that are no setting (paths, output formats, switches of one command).

A new option must be added to one of them, and every settings field either has its flag here or is listed in
``NO_FLAG``.
"""

from __future__ import annotations

import dataclasses

import pytest
import typer

from imagerec import settings
from imagerec.cli import app
from imagerec.settings import (
    AugmentConfig,
    DataConfig,
    ModelConfig,
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
}

#: (command, flag) -> the name of a plain constant of imagerec.settings that is the option's default.
CONSTANTS = {("export", "--parity-images"): "PARITY_IMAGES"}

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
    "data issues": {"--splits", "--limit", "--max-p", "--json"},
    "train": {"--out", "--resume", "--force", "--ray", "--ray-address", "--num-workers"},
    "models": {"--image-size", "--channels"},
    "demo": {"--out"},
    "lr-find": {"--plot", "--steps", "--start-lr", "--end-lr"},
    "evaluate": {"--data", "--split", "--top-k", "--json", "--tta"},
    "report": set(),
    "explain": {"--out", "--class"},
    "compare": {"--split", "--json"},
    "calibrate": {"--target-accuracy", "--no-threshold", "--split"},
    "predict": {"--top-k", "--format", "--batch-size", "--threshold", "--runtime", "--ray", "--ray-address", "--out",
                "--num-workers", "--tta"},
    "video": {"--source", "--out", "--jsonl", "--runtime", "--show", "--allow-any-source", "--json"},
    "export": {"--format", "--quantize", "--out"},
    "benchmark": {"--export", "--runtime", "--rounds"},
    "serve": {"--runtime", "--log-level"},
}  # fmt: skip

#: Settings fields that are deliberately no CLI flag (config file or Python only).
NO_FLAG = {
    DataConfig: {"resize", "cache", "max_invalid_ratio"},
    AugmentConfig: set(),
    ModelConfig: {"dropout", "fine_tune_layers", "bn_momentum"},
    TrainConfig: {"warmup_epochs"},
    ServeSettings: {"decode_threads", "max_sessions"},
    VideoConfig: {"reconnects", "live", "keep_images"},
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
