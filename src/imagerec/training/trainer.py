"""``imagerec train``: the options (flat keywords on top of a :class:`RunConfig`), the run directory's overwrite and
resume rules, then one :class:`~imagerec.training.learner.Learner` does the rest (scan -> split -> resolve defaults
-> tf.data -> model -> fit, resumable -> run directory)."""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from typing import Any

from imagerec.errors import ImagerecError
from imagerec.multilabel import check_task
from imagerec.run import FORMAT_VERSION, RunDir
from imagerec.settings import RunConfig
from imagerec.training.learner import Learner, TrainingInterrupted
from imagerec.training.recipe import compile_model, set_precision, steps_for
from imagerec.training.record import Run, library_versions
from imagerec.training.resume import MUST_MATCH, prepare_run_dir

#: Flat keyword -> (section, field): the names the CLI and ``imagerec.train`` accept.
FLAT_KEYS = {
    "model": ("model", "name"),
    "weights": ("model", "weights"),
    "dropout": ("model", "dropout"),
    "fine_tune_layers": ("model", "fine_tune_layers"),
    "task": ("model", "task"),
    "image_size": ("data", "image_size"),
    "channels": ("data", "channels"),
    "resize": ("data", "resize"),
    "val": ("data", "val"),
    "test": ("data", "test"),
    "cache": ("data", "cache"),
    "follow_symlinks": ("data", "follow_symlinks"),
    "augment": ("augment", "preset"),
    **{k: ("train", k) for k in (
        "epochs", "batch_size", "learning_rate", "optimizer", "weight_decay", "label_smoothing", "schedule",
        "warmup_epochs", "class_weights", "early_stopping", "seed", "mixed_precision", "strategy", "deterministic",
    )},
    "lr": ("train", "learning_rate"),
}  # fmt: skip


def apply_overrides(config: RunConfig, **overrides: Any) -> RunConfig:
    """``config`` with the flat ``overrides`` (``epochs=3``, ``lr=0.01``...) applied; ``None`` values are skipped.

    Raises:
        ImagerecError: an unknown keyword (with a did-you-mean).
    """
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in FLAT_KEYS:
            import difflib

            close = difflib.get_close_matches(key, FLAT_KEYS, n=1)
            raise ImagerecError(
                f"unknown training option {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            )
        section, name = FLAT_KEYS[key]
        config = config.override(section, **{name: value})
    return config


def train(
    data: str | os.PathLike | list,
    out: str | os.PathLike,
    *,
    config: RunConfig | None = None,
    resume: bool = False,
    force: bool = False,
    init: str | os.PathLike | None = None,
    log=print,
    **overrides: Any,
) -> Run:
    """Train a classifier on ``data`` and write a complete run directory at ``out``.

    Args:
        data: a folder of class folders, a split folder, a CSV, or ``builtin:NAME``; a list of them is merged
            (class folders of the same name join).
        out: the run directory to create (or to continue with ``resume=True``).
        config: a :class:`RunConfig`; flat ``overrides`` (``epochs=3``, ``model="tutorial-cnn"``...) apply on top.
        resume: continue from the run's last complete epoch (also to extend a finished run to more epochs).
        force: replace an existing run.
        init: a finished run to fine-tune from (same or more classes; see :mod:`imagerec.training.init`).
        log: where progress lines go.

    Returns:
        The :class:`Run`, whose ``metrics`` hold the final validation and test figures.

    Raises:
        ImagerecError: a setting out of range (``epochs=0``: nothing is written), or an unknown keyword.
        RunError: the run exists (without ``force``/``resume``), or a resume changes a setting in ``MUST_MATCH``.
        TrainingInterrupted: Ctrl-C or SIGTERM; ``resume=True`` continues from the last complete epoch.

    Example:
        >>> run = imagerec.train("builtin:digits", out="runs/digits", epochs=5)
        >>> run.metrics["test"]["accuracy"]
    """
    from imagerec.distributed.strategy import worker_run
    from imagerec.training.init import InitLearner, inherit, source_config
    from imagerec.training.recipe import global_policy_kept

    base, source = config or RunConfig(), RunDir(init) if init is not None else None
    if source is not None:
        given = {FLAT_KEYS[k]: v for k, v in overrides.items() if v is not None and k in FLAT_KEYS}
        base = inherit(base, source_config(source), given, source)
    checked = apply_overrides(base, **overrides).validate()  # refused before `out` is touched
    check_task(checked.model.task)
    # In a TF_CONFIG cluster only the chief writes `out`; other workers get a private temp dir (removed at exit).
    with worker_run(out, resume, lambda resume: prepare_run_dir(RunDir(out), resume, force), force) as (
        path,
        previous,
    ):
        if previous:  # a resumed run starts from its own resolved settings; flags may change the mutable ones
            checked = apply_overrides(RunConfig.from_dict(previous["config"]), **overrides)
            if previous.get("init_from") and source is None:
                source = RunDir(previous["init_from"]["run"])
        learner = Learner if source is None else functools.partial(InitLearner, init=source)
        with global_policy_kept():  # the run sets the policy it trains in; the caller's comes back after
            return learner(data, checked, RunDir(path), previous=previous, log=log).train()


__all__ = [
    "train",
    "Run",
    "Learner",
    "TrainingInterrupted",
    "apply_overrides",
    "compile_model",
    "library_versions",
    "set_precision",
    "steps_for",
    "FLAT_KEYS",
    "MUST_MATCH",
    "FORMAT_VERSION",
    "replace",
]
