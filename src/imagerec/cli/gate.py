"""``imagerec compare OLD NEW --gate``: the CI check that refuses a worse model (see imagerec.evaluation.gate)."""

from __future__ import annotations

from pathlib import Path

import typer

from imagerec.errors import ImagerecError


def run_gate(runs: list[Path], data: str | None, tolerance: float) -> None:
    """Print one line per figure where NEW is worse than OLD and exit 1; else print 'gate passed'."""
    from imagerec.classifier import Classifier
    from imagerec.evaluation.gate import gate_runs

    if len(runs) != 2:
        raise ImagerecError(f"compare --gate takes two runs, OLD and NEW, got {len(runs)}")
    # the runs' own Keras models: the gate judges the trained model, whichever export serves it
    old, new = (Classifier.load(run, runtime="keras") for run in runs)
    result = gate_runs(old, new, data=data, tolerance=tolerance)
    where = f"{result.num_images} images of {result.source}"
    if result.passed:
        o, n = result.old, result.new
        overall = "accuracy" if "accuracy" in o else "mAP"
        typer.echo(
            f"gate passed: {runs[1]} is no worse than {runs[0]} on {where} ({overall} {o[overall]:.4f} -> "
            f"{n[overall]:.4f}, macro F1 {o['macro_f1']:.4f} -> {n['macro_f1']:.4f}, tolerance {tolerance:g})"
        )
        return
    for line in result.failures:
        typer.echo(f"gate failed: {line}")
    typer.echo(
        f"gate failed: {runs[1]} is worse than {runs[0]} on {where} ({len(result.failures)} figure(s))"
    )
    raise typer.Exit(1)
