"""``imagerec review DIR --out QUEUE``: the recorded pictures worth labelling (see imagerec.monitoring.review)."""

from __future__ import annotations

from pathlib import Path

import typer

from imagerec.cli.app import app
from imagerec.cli.options import option
from imagerec.settings import ReviewSettings


@app.command("review")
def review(
    records: Path = typer.Argument(..., help="A --record DIR written by 'imagerec serve/video --record'."),
    out: Path = typer.Option(..., "--out", "-o", help="The queue folder to write (self-contained; movable)."),
    size: int = option(ReviewSettings, "size", "--size", help="Most pictures in the queue."),
    run: Path = typer.Option(
        None,
        "--run",
        help="The served run: its classes (and multi-label thresholds) are what reviewers pick from.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing queue folder."),
) -> None:
    """Queue the pictures whose labels would help most: unsure + out-of-distribution + diverse, deduplicated.

    Label them in the browser with 'imagerec serve RUN --review QUEUE --review-out DATASET' (the Review tab), then
    'imagerec train DATA DATASET --init RUN --out NEW' and 'imagerec compare RUN NEW --gate'.
    """
    from imagerec.monitoring.review import build_queue

    classes = thresholds = None
    if run is not None:
        from imagerec.multilabel import read_thresholds
        from imagerec.run.layout import RunDir

        run_dir = RunDir(run).require()
        classes = run_dir.read_labels()
        thresholds = dict(zip(classes, (float(t) for t in read_thresholds(run_dir, classes)), strict=True))
    meta = build_queue(records, out, ReviewSettings(size=size), classes, thresholds, force=force)
    typer.echo(
        f"queued {meta['size']} of {meta['candidates']} recorded pictures to {out} "
        f"(label them: imagerec serve RUN --review {out} --review-out DATASET)"
    )
