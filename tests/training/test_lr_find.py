"""The learning-rate range test (``imagerec lr-find``)."""

from __future__ import annotations

import math

import pytest

from imagerec.cli import main
from imagerec.errors import ImagerecError
from imagerec.training.lr_find import lr_find, suggest


def test_suggest_on_a_known_curve():
    lrs = [10 ** (-6 + i * 0.1) for i in range(60)]
    # flat, then a steep drop around 1e-3, minimum near 1e-2, then a blow-up
    losses = [
        2.3 - 2.0 / (1 + math.exp(-(math.log10(lr) + 3) * 4)) + max(0, math.log10(lr) + 2) ** 2 for lr in lrs
    ]
    steepest, min10 = suggest(lrs, losses)
    assert 3e-4 < steepest < 3e-3
    best = lrs[losses.index(min(losses))]
    assert min10 == pytest.approx(best / 10)
    with pytest.raises(ImagerecError, match="at least 5"):
        suggest(lrs[:3], losses[:3])


def test_lr_find_api_and_plot(colour_data, tmp_path):
    result = lr_find(
        colour_data,
        plot=tmp_path / "lr.png",
        steps=40,
        model="tutorial-cnn",
        batch_size=8,
        deterministic=True,  # the same curve every time (the checks below were measured on it)
        log=lambda *_: None,
    )
    assert 5 <= len(result.losses) <= 40 and len(result.losses) == len(result.learning_rates)
    assert all(math.isfinite(v) for v in result.losses)
    assert result.learning_rates == sorted(result.learning_rates)
    # the colour data is learnable: the loss falls as the LR grows, bottoms out, then diverges (measured:
    # 1.08 flat up to ~1e-4, minimum 0.96 at 1.3e-2, 1.5-1.9 above 3e-2)
    losses, lrs = result.losses, result.learning_rates
    lowest = losses.index(min(losses))
    assert 0 < lowest < len(losses) - 1, losses
    assert losses[lowest] < 0.95 * losses[0], losses  # it falls: the swept LR really reached the optimizer
    assert max(losses[lowest:]) > 1.2 * losses[lowest], losses  # then it rises: the LR grew past divergence
    # the suggestion lies strictly inside the sweep, on the falling side, below the divergence point
    assert lrs[0] < result.suggestion < lrs[-1]
    assert result.suggestion <= lrs[lowest]
    assert losses[lrs.index(result.suggestion)] < losses[0]
    assert result.min_loss_over_10 == pytest.approx(lrs[lowest] / 10)
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lr_find_cli(colour_data, tmp_path, capsys):
    plot = tmp_path / "find.png"
    with pytest.raises(SystemExit) as info:
        main(
            [
                "lr-find",
                str(colour_data),
                "--plot",
                str(plot),
                "--steps",
                "30",
                "--model",
                "tutorial-cnn",
                "--batch-size",
                "8",
            ]
        )
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "suggested learning rate" in out and "--lr " in out
    assert plot.exists()
