"""Ray integration: the same training on a Ray cluster (Ray Train), and batch prediction with Ray Data.

* :func:`train_with_ray` runs ``imagerec.train`` in ``num_workers`` Ray Train workers through
  ``ray.train.tensorflow.TensorflowTrainer``; Ray writes ``TF_CONFIG`` in each, so ``imagerec.train`` picks
  MultiWorkerMirroredStrategy and the multi-worker rules of :mod:`imagerec.distributed.strategy` apply (the chief
  writes the run; the data and the run directory must be on a path every node can read).
* :func:`predict_with_ray` classifies a folder or file list with Ray Data: ``from_items(paths)`` ->
  ``map_batches(<a pool of model actors>, batch_size, concurrency=N)``, streamed back (Ray Data's back-pressure
  bounds what is in flight) into one Parquet or JSON-lines file, rows in input order.

With no address both start a local Ray instance (``ray.init(num_cpus=..., include_dashboard=False)``), so they run
on one machine too. Ray is imported here only (``pip install 'imagerec[distributed]'``).

Example:
    >>> from imagerec.distributed.ray import predict_with_ray
    >>> predict_with_ray("runs/fmnist", ["photos/"], "results.parquet", num_workers=2)
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from imagerec.errors import ImagerecError
from imagerec.prediction import Prediction, PredictionError
from imagerec.settings import RUNTIME, PredictSettings, RaySettings

CONNECT_TIMEOUT_S = 10.0
OUTPUT_SUFFIXES = (".parquet", ".jsonl")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImagerecError(
            "Ray is not installed; install it with pip install 'imagerec[distributed]'"
        ) from None
    return ray


def _probe(address: str, timeout: float) -> None:
    """Fail fast with a readable error when ``address`` (host:port or ray://host:port) does not answer."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ImagerecError(f"Ray address {address!r} is not host:port, ray://host:port or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ImagerecError(
            f"cannot reach the Ray cluster at {address!r} within {timeout:g}s ({exc.__class__.__name__}: {exc}); "
            "check the address (the head node's GCS port, default 6379, or ray://HOST:10001), "
            "or leave out --ray-address to start a local Ray instance"
        ) from None


def init_ray(address: str | None = None, num_cpus: int = 2, timeout: float = CONNECT_TIMEOUT_S):
    """Connect to the Ray cluster at ``address``, or start a local instance with ``num_cpus`` when it is None.

    Raises:
        ImagerecError: when the address is malformed or does not answer within ``timeout`` seconds.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, configure_logging=False)
        return ray
    if address != "auto":
        _probe(address, timeout)
    try:
        ray.init(address=address, include_dashboard=False, configure_logging=False)
    except (ConnectionError, RuntimeError) as exc:
        raise ImagerecError(
            f"cannot connect to the Ray cluster at {address!r}: {str(exc).splitlines()[0]}"
        ) from None
    return ray


# training -----------------------------------------------------------------------------------------------------


def _train_loop(cfg: dict[str, Any]) -> None:
    """What each Ray Train worker runs: ``imagerec.train``, one Learner per worker (Ray has set ``TF_CONFIG``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import ray.train

    from imagerec.training.trainer import train

    run = train(cfg["data"], cfg["out"], force=cfg["force"], resume=cfg["resume"], **cfg["overrides"])
    ray.train.report({"test_accuracy": run.metrics.get("test", {}).get("accuracy", float("nan"))})


def train_with_ray(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    num_workers: int = RaySettings.num_workers,
    address: str | None = RaySettings.address,
    use_gpu: bool = False,
    force: bool = False,
    resume: bool = False,
    **overrides: Any,
):
    """Train with Ray Train's ``TensorflowTrainer`` on ``num_workers`` workers; return the chief's :class:`Run`.

    A worker that dies makes the job fail (``FailureConfig(max_failures=0)``) with an :class:`ImagerecError`;
    running the same call again rejoins the chief's last complete epoch (``RUN/backup``).

    Raises:
        ImagerecError: unreachable address, not enough CPUs/GPUs for ``num_workers``, or a failed worker.
    """
    from imagerec.settings import RunConfig as RunSettings  # Ray Train has a RunConfig too
    from imagerec.training.trainer import apply_overrides

    RaySettings(num_workers=num_workers, address=address).validate()
    apply_overrides(RunSettings(), **overrides).validate()  # refused here, before Ray starts
    ray = init_ray(address, num_cpus=max(2, num_workers))
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    key = "GPU" if use_gpu else "CPU"
    have = ray.cluster_resources().get(key, 0)
    if have < num_workers:
        raise ImagerecError(
            f"the Ray cluster has {have:g} {key}(s) but --num-workers is {num_workers}; ask for fewer workers"
        )
    data, out = (
        os.path.abspath(os.fspath(data))
        if "://" not in str(data) and not str(data).startswith("builtin:")
        else str(data),
        os.path.abspath(out),
    )
    loop_cfg = {"data": data, "out": out, "force": force, "resume": resume, "overrides": overrides}
    trainer = TensorflowTrainer(
        _train_loop,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={key: 1}),
        run_config=RunConfig(name=f"imagerec-{Path(out).name}-{int(time.time())}", failure_config=FailureConfig(max_failures=0),
                             storage_path=str(Path(out).parent / ".ray-results")),
    )  # fmt: skip
    try:
        trainer.fit()
    except Exception as exc:  # Ray wraps the worker's exception (TrainingFailedError / WorkerGroupError)
        raise ImagerecError(
            f"Ray training failed: {_root_cause(exc)}; rerun the same command to continue from the last complete "
            f"epoch in {out}/backup (--force starts over)"
        ) from None
    from imagerec.training.record import Run

    return Run.load(out)


def _root_cause(exc: BaseException) -> str:
    """One readable line out of Ray's multi-line worker-group error."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "actor died unexpectedly" in text or "health check failed" in text:
        ranks = sorted(set(re.findall(r"\[Rank (\d+) Error Snippet\]:\s*A worker health check failed", text)))
        return f"Ray Train worker {'/'.join(ranks) or '?'} died (its process exited or was killed)"
    ours = [ln.split("ImagerecError: ", 1)[1] for ln in lines if "ImagerecError: " in ln]
    if ours:
        return ours[-1][:400]
    return f"{type(exc).__name__}: {(lines[-1] if lines else '')[:300]}"


# batch prediction --------------------------------------------------------------------------------------------


class _Predictor:
    """A Ray Data actor: loads the run once, then classifies batches of paths."""

    def __init__(self, run: str, top_k: int, runtime: str, threshold: float | None = None):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from imagerec.classifier import Classifier

        self.clf = Classifier.load(run, runtime=runtime)
        self.top_k = top_k
        self.threshold = threshold

    def __call__(self, batch: dict[str, Any]):
        import pyarrow as pa

        paths = [str(p) for p in batch["path"]]
        results = self.clf.predict(
            paths, top_k=self.top_k, batch_size=max(1, len(paths)), threshold=self.threshold, errors="return"
        )
        return pa.Table.from_pylist(
            [_row(path, r) for path, r in zip(paths, results, strict=True)], schema=_schema()
        )


def _schema():
    import pyarrow as pa

    pairs = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
    return pa.schema([
        ("path", pa.string()), ("label", pa.string()), ("confidence", pa.float64()), ("top_k", pairs),
        ("labels", pa.list_(pa.string())), ("scores", pairs),  # a multi-label run's answer; null otherwise
        ("ood_score", pa.float64()), ("reason", pa.string()),
        ("error_code", pa.string()), ("error_message", pa.string()),
    ])  # fmt: skip


def _row(path: str, result: Prediction | PredictionError) -> dict[str, Any]:
    if isinstance(result, PredictionError):
        empty = dict.fromkeys(("label", "confidence", "labels", "scores", "ood_score", "reason"))
        return {"path": path, **empty, "top_k": [], "error_code": result.code, "error_message": result.message}
    top = [{"label": label, "score": float(score)} for label, score in result.top_k]
    scores = None if result.scores is None else [{"label": k, "score": float(p)} for k, p in result.scores.items()]
    return {"path": path, "label": result.label, "confidence": float(result.confidence), "top_k": top,
            "labels": result.labels, "scores": scores, "ood_score": result.ood_score, "reason": result.reason,
            "error_code": None, "error_message": None}  # fmt: skip


def _json_line(row: dict[str, Any]) -> str:
    """The same object ``imagerec predict --format json`` prints for this row: the result's ``to_dict()``."""
    return json.dumps(_result(row).to_dict())


def _result(row: dict[str, Any]) -> Prediction | PredictionError:
    """The typed result a written row (see :func:`_row`) came from."""
    if row["error_code"] is not None:
        return PredictionError(row["path"], row["error_code"], row["error_message"])
    top = [(t["label"], t["score"]) for t in row["top_k"]]
    scores = None if row.get("scores") is None else {t["label"]: t["score"] for t in row["scores"]}
    extra = {"ood_score": row.get("ood_score"), "reason": row.get("reason"), "labels": row.get("labels")}
    return Prediction(row["label"], row["confidence"], top, source=row["path"], scores=scores, **extra)


def predict_with_ray(
    run: str | os.PathLike,
    sources: list[str],
    out: str | os.PathLike,
    *,
    num_workers: int = RaySettings.num_workers,
    batch_size: int = PredictSettings.batch_size,
    top_k: int = PredictSettings.top_k,
    address: str | None = RaySettings.address,
    runtime: str = RUNTIME,
    threshold: float | None = PredictSettings.threshold,
) -> dict[str, Any]:
    """Classify every image in ``sources`` (files, folders, globs) with a Ray Data actor pool; write ``out``.

    Args:
        run: the run directory (on a path every node can read).
        sources: image files, folders (searched recursively) or globs.
        out: ``*.parquet`` (columns path, label, confidence, top_k, labels, scores (a multi-label run's label set
            and every class's probability; null otherwise), ood_score, reason, error_code, error_message) or
            ``*.jsonl`` (the rows ``imagerec predict --format json`` prints).
        num_workers: model actors (each loads the model once).
        batch_size: images per actor call.
        threshold: answer ``unknown`` below this confidence (None: the run's calibrated threshold; 0: off).

    Returns:
        ``{"images", "failed", "seconds", "images_per_second", "out"}``.
    """
    from imagerec.data.paths import expand_paths
    from imagerec.run import RunDir

    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise ImagerecError(f"--out {str(out)!r} must end in {' or '.join(OUTPUT_SUFFIXES)}")
    RaySettings(num_workers=num_workers, address=address).validate()
    PredictSettings(top_k=top_k, batch_size=batch_size, threshold=threshold).validate()
    RunDir(run).require()
    files, missing = expand_paths([str(s) for s in sources])
    if missing or not files:
        raise ImagerecError(
            f"no image files found in {', '.join(missing or sources)}; expected image files, folders or globs"
        )
    ray = init_ray(address, num_cpus=max(2, num_workers))
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    t0 = time.perf_counter()
    ds = ray.data.from_items(
        [{"path": str(p.resolve())} for p in files],
        override_num_blocks=max(1, min(len(files) // batch_size, 200)),
    )
    ds = ds.map_batches(
        _Predictor, fn_constructor_args=(str(Path(run).resolve()), top_k, runtime, threshold), batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=num_workers), num_cpus=1, batch_format="numpy",
    )  # fmt: skip
    images, failed = _write(ds, out, batch_size)
    seconds = time.perf_counter() - t0
    return {"images": images, "failed": failed, "seconds": round(seconds, 3),
            "images_per_second": round(images / max(seconds, 1e-9), 1), "out": str(out)}  # fmt: skip


def _write(ds, out: Path, batch_size: int) -> tuple[int, int]:
    """Stream batches back into one file, written under a temporary name and renamed when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    images = failed = 0
    sink = _JsonlSink(tmp) if out.suffix == ".jsonl" else _ParquetSink(tmp)
    try:
        for table in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
            images += table.num_rows
            failed += table.num_rows - table.column("error_code").null_count
            sink.write(table)
        sink.close()
        os.replace(tmp, out)
    finally:
        sink.close()
        tmp.unlink(missing_ok=True)
    return images, failed


class _JsonlSink:
    def __init__(self, path: Path):
        self.fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, table) -> None:
        self.fh.write("".join(_json_line(r) + "\n" for r in table.to_pylist()))

    def close(self) -> None:
        self.fh.close()


class _ParquetSink:
    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.writer = pq.ParquetWriter(str(path), _schema())
        self.closed = False

    def write(self, table) -> None:
        self.writer.write_table(table.cast(_schema()))

    def close(self) -> None:
        if not self.closed:
            self.writer.close()
            self.closed = True
