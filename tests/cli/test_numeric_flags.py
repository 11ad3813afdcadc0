"""Every numeric flag of every command is validated: out of range is one line on stderr naming the flag, exit 2.

The bounds are read from where the code declares them (a settings field's :class:`~imagerec.settings.Bound`, or
the ``Bound`` beside a command for the few flags that are no setting), so these tests follow a bound that changes;
what they guard is that every numeric option has one, that the CLI enforces it before touching anything, and that
the message names the flag the user typed. Hypothesis draws the values: just outside a bound, far outside it,
NaN and infinities.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from test_defaults import OPTIONS, OVERRIDE, SAME

import imagerec
from imagefixtures import run_cli
from imagerec.bounds import Bound, label_of, require
from imagerec.cli import data as cli_data
from imagerec.cli import export as cli_export
from imagerec.errors import ImagerecError
from imagerec.settings import DataConfig

#: (command, flag) -> (settings class, field) whose bound the flag obeys.
FIELD_OF = {
    **SAME,
    **OVERRIDE,
    ("models", "--image-size"): (DataConfig, "image_size"),
    ("models", "--channels"): (DataConfig, "channels"),
}

#: Numeric flags that are no setting: the bound the command checks with ``settings.require``.
CLI_BOUNDS = {
    ("data inspect", "--workers"): cli_data.WORKERS,
    ("data builtin", "--limit"): cli_data.LIMIT,
    ("export", "--parity-images"): cli_export.PARITY_IMAGES_BOUND,
}

NUMERIC = sorted(key for key, param in OPTIONS.items() if param.type_descriptor.annotation in (int, float))


def _field(key) -> dataclasses.Field:
    cls, name = FIELD_OF[key]
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def bound_of(key) -> Bound:
    return CLI_BOUNDS[key] if key in CLI_BOUNDS else _field(key).metadata["bound"]


def is_integer(key) -> bool:
    return OPTIONS[key].type_descriptor.annotation is int


def outside(key) -> st.SearchStrategy:
    """Values the flag's type accepts but its bound refuses."""
    bound = bound_of(key)
    if is_integer(key):
        near = [v for v in (bound.ge, bound.gt, bound.le, bound.lt) if v is not None]
        edges = st.sampled_from([int(v) + d for v in near for d in (-1, 0, 1)] or [0])
        values = st.one_of(edges, st.integers(), st.integers(-(10**30), 10**30))
    else:
        near = [v for v in (bound.ge, bound.gt, bound.le, bound.lt) if v is not None]
        edges = st.sampled_from(
            [math.nextafter(v, d) for v in near for d in (-math.inf, math.inf)] + near or [0.0]
        )
        values = st.one_of(edges, st.sampled_from([math.nan, math.inf, -math.inf]), st.floats())
    return values.filter(lambda v: v not in bound)


def inside(key) -> st.SearchStrategy:
    """Values the bound accepts."""
    bound = bound_of(key)
    if bound.choices:
        return st.sampled_from(bound.choices)
    low = bound.ge if bound.ge is not None else bound.gt
    high = bound.le if bound.le is not None else bound.lt
    if is_integer(key):
        low = None if low is None else math.ceil(low) + (bound.gt is not None and bound.ge is None)
        return st.integers(low, high if high is not None else 10**9).filter(lambda v: v in bound)
    return st.floats(
        low if low is not None else -1e12,
        high if high is not None else 1e12,
        exclude_min=bound.gt is not None and bound.ge is None,
        exclude_max=bound.lt is not None and bound.le is None,
    ).filter(lambda v: v in bound)


def test_there_are_numeric_flags_to_check():
    assert len(NUMERIC) > 40
    assert ("train", "--epochs") in NUMERIC and ("serve", "--port") in NUMERIC


@pytest.mark.parametrize("key", NUMERIC, ids=" ".join)
def test_every_numeric_flag_has_a_bound_that_names_it(key):
    assert key in CLI_BOUNDS or key in FIELD_OF, f"{key}: give the flag a settings field with a bound"
    assert isinstance(bound_of(key), Bound), f"{key}: declare the field with settings.integer() or number()"
    if key in FIELD_OF:
        assert label_of(_field(key)).split(" ")[0] == key[1], f"{key}: errors would name another flag"


# --- the settings, without the CLI: cheap, so many examples --------------------------------------------------------
SETTINGS_KEYS = [key for key in NUMERIC if key in FIELD_OF]


@pytest.mark.parametrize("key", SETTINGS_KEYS, ids=" ".join)
def test_settings_refuse_out_of_range_values_naming_the_flag(key):
    cls, name = FIELD_OF[key]

    @hypothesis_settings(max_examples=60, deadline=None)
    @given(outside(key))
    def check(value):
        with pytest.raises(ImagerecError) as exc:
            cls(**{name: value}).validate()
        assert str(exc.value).startswith(f"{key[1]} ") and " must be " in str(exc.value)
        assert "\n" not in str(exc.value)

    check()


@pytest.mark.parametrize("key", SETTINGS_KEYS, ids=" ".join)
def test_settings_accept_in_range_values(key):
    cls, name = FIELD_OF[key]
    own = bound_of(key)

    @hypothesis_settings(max_examples=60, deadline=None)
    @given(inside(key))
    def check(value):
        try:
            cls(**{name: value}).validate()
        except ImagerecError as exc:
            # only a rule across fields may refuse it (--val + --test, --start-lr < --end-lr), never its own bound
            assert str(exc) != own.message(label_of(_field(key)), value, _field(key).default)
            assert str(exc).count("--") >= 2, str(exc)

    check()


@pytest.mark.parametrize("key", sorted(CLI_BOUNDS), ids=" ".join)
def test_flags_that_are_no_setting_use_the_same_helper(key):
    bound = CLI_BOUNDS[key]

    @hypothesis_settings(max_examples=60, deadline=None)
    @given(outside(key), inside(key))
    def check(bad, good):
        assert require(key[1], good, bound) == good
        with pytest.raises(ImagerecError, match=f"^{key[1]} must be "):
            require(key[1], bad, bound)

    check()


# --- the CLI: one line, exit 2, nothing written ---------------------------------------------------------------------
def _arguments(command: str, tmp) -> list[str]:
    """What each command needs besides the flag; nothing of it exists, so only the flag can be refused first."""
    run, data = str(tmp / "no-run"), str(tmp / "no-data")
    return {
        "train": [data, "--out", str(tmp / "out")],
        "demo": ["--out", str(tmp / "out")],
        "lr-find": [data, "--plot", str(tmp / "out" / "lr.png")],
        "models": [],
        "data inspect": [data],
        "data builtin": ["digits", str(tmp / "out")],
        "data split": [data, "--out", str(tmp / "out" / "manifest.csv")],
        "data issues": [run],
        "evaluate": [run],
        "calibrate": [run],
        "compare": [run, run, "--gate"],
        "predict": [run, str(tmp / "no-image.png")],
        "embed": [run, str(tmp / "no-image.png"), "--out", str(tmp / "out" / "vectors.npy")],
        "video": [run, "--source", str(tmp / "no-video.mp4")],
        "serve": [run],
        "monitor": [str(tmp / "no-records"), "--run", run],
        "review": [str(tmp / "no-records"), "--out", str(tmp / "out")],
        "export": [run, "--out", str(tmp / "out")],
        "benchmark": [run],
    }[command]


@pytest.mark.parametrize("key", NUMERIC, ids=" ".join)
def test_cli_refuses_out_of_range_values_in_one_line(key, tmp_path, capsys):
    command, flag = key

    @hypothesis_settings(
        max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(outside(key))
    def check(value):
        code, out, err = run_cli(
            capsys, *command.split(), *_arguments(command, tmp_path), f"{flag}={value!r}"
        )
        assert code == 2, (value, out, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert err.startswith(f"imagerec: error: {flag} ") and " must be " in err, err
        assert not (tmp_path / "out").exists(), "a refused command wrote something"

    check()


# --- real calls on a tiny dataset -----------------------------------------------------------------------------------
def test_train_with_zero_or_negative_epochs_writes_no_run(colour_data, tmp_path, capsys):
    for epochs in ("0", "-1"):
        code, _, err = run_cli(
            capsys, "train", str(colour_data), "--out", str(tmp_path / "run"), f"--epochs={epochs}"
        )
        assert (code, err) == (2, f"imagerec: error: --epochs must be >= 1, got {epochs}\n")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ImagerecError, match=r"^--epochs must be >= 1, got 0$"):
        imagerec.train(colour_data, out=tmp_path / "run", epochs=0)
    with pytest.raises(ImagerecError, match=r"^--lr \(learning_rate\) must be > 0, got -0.1$"):
        imagerec.train(colour_data, out=tmp_path / "run", lr=-0.1)
    assert not (tmp_path / "run").exists()


def test_in_range_values_pass_on_a_real_dataset(colour_data, tmp_path, capsys):
    code, _, err = run_cli(capsys, "data", "inspect", str(colour_data), "--workers", "1", "--json")
    assert code == 0, err
    code, _, err = run_cli(
        capsys,
        "data",
        "split",
        str(colour_data),
        "--out",
        str(tmp_path / "m.csv"),
        "--val",
        "0",
        "--test",
        "0.5",
    )
    assert code == 0, err
    run = tmp_path / "run"
    flags = ["--epochs", "1", "--batch-size", "8", "--image-size", "16", "--channels", "3", "--lr", "0.01",
             "--val", "0.25", "--test", "0.25", "--label-smoothing", "0", "--weight-decay", "0",
             "--early-stopping", "0", "--seed", "0", "--model", "tutorial-cnn"]  # fmt: skip
    code, _, err = run_cli(capsys, "train", str(colour_data), "--out", str(run), *flags)
    assert code == 0, err
    image = next(colour_data.glob("red/*.png"))
    for args in (
        ["evaluate", str(run), "--top-k", "1", "--json"],
        [
            "predict",
            str(run),
            str(image),
            "--top-k",
            "1",
            "--batch-size",
            "1",
            "--threshold",
            "0",
            "-f",
            "json",
        ],
    ):
        code, _, err = run_cli(capsys, *args)
        assert code == 0, (args, err)
