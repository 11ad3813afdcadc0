"""``imagerec embed RUN PATH... --out vectors.npy|.parquet``: the images' embeddings (L2-normalised features)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import typer

from imagerec.cli.app import app
from imagerec.cli.options import option
from imagerec.data.paths import expand_paths
from imagerec.errors import ImagerecError, ImageRejected
from imagerec.settings import RUNTIME, PredictSettings

SUFFIXES = (".npy", ".parquet")


@app.command("embed")
def embed(
    run: Path = typer.Argument(..., help="Run directory written by 'imagerec train' (or an export)."),
    paths: list[str] = typer.Argument(..., help="Image files, folders (recursive) or globs."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="vectors.npy (float32 N x D; the paths go to vectors.paths.txt) or vectors.parquet"
    ),
    batch_size: int = option(PredictSettings, "batch_size", "--batch-size", help="Images per model call."),
    runtime: str = typer.Option(RUNTIME, help="auto | keras | an export of the run (see 'imagerec predict')."),
) -> None:
    """Write the embedding (penultimate features, L2-normalised) of each image, with its OOD score in Parquet."""
    from imagerec.classifier import Classifier

    if out.suffix not in SUFFIXES:
        raise ImagerecError(f"--out {str(out)!r}: write a .npy or a .parquet file")
    PredictSettings(batch_size=batch_size).validate()
    files, missing = expand_paths(paths)
    if not files:
        raise ImagerecError(f"no image files found in {', '.join(paths)}; expected image files, folders or globs")
    clf = Classifier.load(run, runtime=runtime)
    kept, vectors, failed = [], [], len(missing)
    for item in missing:
        typer.echo(f"imagerec: {item}: no such file, folder or matching glob", err=True)
    for start in range(0, len(files), batch_size):
        chunk = [str(p) for p in files[start : start + batch_size]]
        try:
            vectors.extend(clf.embed(chunk, batch_size))
            kept.extend(chunk)
            continue
        except ImageRejected:
            pass  # one by one, to name each unreadable file
        for path in chunk:
            try:
                vectors.append(clf.embed(path)[0])
                kept.append(path)
            except ImageRejected as exc:
                typer.echo(f"imagerec: {path}: {exc}", err=True)
                failed += 1
    matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32)
    _write(out, kept, matrix, clf.ood_scores(matrix) if len(matrix) else None)
    typer.echo(f"wrote {len(kept)} embeddings of {matrix.shape[1] if matrix.ndim == 2 else 0} dims to {out}")
    if failed:
        typer.echo(f"imagerec: {failed} of {len(files) + len(missing)} input(s) failed", err=True)
        raise typer.Exit(1)


def _write(out: Path, paths: list[str], matrix: np.ndarray, ood: np.ndarray | None) -> None:
    from imagerec.utils import atomic_write_bytes, atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    if out.suffix == ".npy":
        np.save(buf, matrix, allow_pickle=False)
        atomic_write_bytes(out, buf.getvalue())
        atomic_write_text(out.with_suffix(".paths.txt"), "".join(f"{p}\n" for p in paths))
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImagerecError("writing .parquet needs pyarrow: pip install pyarrow (or write a .npy)") from None

    columns = {"path": pa.array(paths), "embedding": pa.array(list(matrix), type=pa.list_(pa.float32()))}
    if ood is not None:
        columns["ood_score"] = pa.array(ood.astype(np.float32))
    pq.write_table(pa.table(columns), buf)
    atomic_write_bytes(out, buf.getvalue())
