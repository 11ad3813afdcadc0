"""Pick the ``tf.distribute`` strategy for a training run, and the multi-worker rules that go with it.

``auto``: MultiWorkerMirroredStrategy when ``TF_CONFIG`` describes a cluster of more than one task (the convention
of Kubeflow TFJob, Vertex AI / SageMaker and Ray Train), MirroredStrategy for several local GPUs, the default
strategy otherwise.

Multi-worker rules (the standard Keras pattern):

* the global batch is ``batch_size`` (per replica) x replicas, and the peak learning rate is scaled linearly with
  the number of replicas (Goyal et al. 2017; the warm-up of the cosine schedule is kept); both are logged and saved
  in ``config.json`` under ``strategy``;
* every worker builds the same pipeline from the same seed, and ``tf.data`` shards it by *data*
  (``AutoShardPolicy.DATA``: each worker keeps every N-th batch) -- the training arrays are in memory, so there are
  no files to shard by;
* only the chief (``task.type == "chief"``, or worker 0 when the cluster has no chief) writes the run directory;
  the other workers write into a private temporary directory that is removed when they finish;
* on ``--resume`` every worker restores the chief's last complete checkpoint (``RUN/backup``, on a shared path), so
  a restarted cluster continues from the same epoch with the same weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imagerec.errors import ImagerecError

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
TASK_TYPES = ("chief", "worker", "ps", "evaluator")
TF_CONFIG_HINT = 'expected JSON like {"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": 0}}'


def _malformed(what: str) -> ImagerecError:
    return ImagerecError(
        f"TF_CONFIG is malformed: {what}; {TF_CONFIG_HINT}. Fix or unset the TF_CONFIG variable"
    )


def read_tf_config() -> dict[str, Any] | None:
    """The parsed and validated ``TF_CONFIG`` environment variable, or None when it is unset or empty.

    Raises:
        ImagerecError: when it is not JSON, has no ``cluster``/``task``, or the task is not in the cluster.
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except ValueError as exc:
        raise _malformed(f"not JSON ({exc.__class__.__name__}: {exc}) in {raw[:60]!r}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("cluster"), dict) or not cfg["cluster"]:
        raise _malformed("no 'cluster' object")
    for job, addresses in cfg["cluster"].items():
        if job not in TASK_TYPES or not isinstance(addresses, list) or not addresses:
            raise _malformed(
                f"cluster job {job!r} must be one of {', '.join(TASK_TYPES)} with a list of addresses"
            )
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit():
                raise _malformed(f"address {address!r} in job {job!r} is not host:port")
    task = cfg.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise _malformed("no 'task' object with 'type' and 'index'")
    kind, index = task["type"], task["index"]
    if kind not in cfg["cluster"] or not isinstance(index, int) or not 0 <= index < len(cfg["cluster"][kind]):
        raise _malformed(f"task {kind}:{index} is not in the cluster {json.dumps(cfg['cluster'])}")
    return cfg


def num_workers(tf_config: dict[str, Any] | None) -> int:
    return (
        sum(len(v) for k, v in tf_config["cluster"].items() if k in ("chief", "worker")) if tf_config else 1
    )


def is_chief(tf_config: dict[str, Any] | None = None) -> bool:
    """True for the task that writes the run: the ``chief``, or worker 0 when the cluster has no chief."""
    tf_config = tf_config if tf_config is not None else read_tf_config()
    if not tf_config or num_workers(tf_config) <= 1:
        return True
    task = tf_config["task"]
    if "chief" in tf_config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def task_name(tf_config: dict[str, Any] | None = None) -> str:
    tf_config = tf_config if tf_config is not None else read_tf_config()
    return f"{tf_config['task']['type']}:{tf_config['task']['index']}" if tf_config else "local"


def _structured_reduce(base):
    """``base`` (a ``tf.distribute`` strategy class) whose ``reduce`` survives Keras 3's ``fit``.

    Before the first step of ``fit`` / ``evaluate`` Keras ``reduce``s a whole ``(x, y)`` input batch only to read
    its shapes (keras-team/keras#20585, tensorflow#72388); stock strategies cannot reduce a tuple, and the
    reduction fails anyway when replicas' batches differ in size (a last batch of 7 split 4 + 3 over two replicas,
    or workers with different remainders). A nested structure therefore gets one replica's local values; single
    values are reduced across replicas as usual. Keras also asks for ``axis=0`` on scalar metrics, which have no
    axis 0: those are reduced across replicas only.
    """
    import tensorflow as tf

    class StructuredReduce(base):
        def reduce(self, reduce_op, value, axis):
            local = self.experimental_local_results
            if isinstance(value, (tuple, list, dict)):
                return tf.nest.map_structure(
                    lambda v: local(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v, value
                )
            if (
                axis is not None
                and getattr(local(value)[0], "shape", None) is not None
                and local(value)[0].shape.rank == 0
            ):
                axis = None
            return super().reduce(reduce_op, value, axis)

    StructuredReduce.__name__ = f"StructuredReduce{base.__name__}"
    return StructuredReduce


def _multiworker_strategy():
    import tensorflow as tf

    _configure_coordination(read_tf_config())
    return _structured_reduce(tf.distribute.MultiWorkerMirroredStrategy)()


def _configure_coordination(tf_config: dict[str, Any] | None) -> None:
    """Bound the two waits MWMS leaves open: for every worker to join, and for a silent peer to be declared dead.

    TensorFlow configures its coordination service itself unless one is configured already; we configure the same
    service with explicit timeouts (``IMAGEREC_CLUSTER_TIMEOUT_S``, default 300 s, for joining;
    ``IMAGEREC_HEARTBEAT_TIMEOUT_S``, default 30 s, for a dead peer).
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    if not tf_config or context.context().coordination_service is not None:
        return
    cluster = tf_config["cluster"]
    leader = f"/job:{'chief' if 'chief' in cluster else 'worker'}/replica:0/task:0"
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=j, num_tasks=len(cluster[j]))
        for j in ("chief", "worker")
        if j in cluster
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=leader,
        coordinated_jobs=jobs,
        cluster_register_timeout_in_ms=int(float(os.environ.get("IMAGEREC_CLUSTER_TIMEOUT_S", "300")) * 1000),
        heartbeat_timeout_in_ms=int(float(os.environ.get("IMAGEREC_HEARTBEAT_TIMEOUT_S", "30")) * 1000),
    )


def get_strategy(name: str = "auto"):
    """Return ``(strategy, info)`` where ``info`` records what was chosen and why.

    Args:
        name: ``auto``, ``default``, ``mirrored`` or ``multiworker``.

    Raises:
        ImagerecError: for an unknown name, a malformed ``TF_CONFIG``, or ``multiworker`` without a cluster.
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ImagerecError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    tf_config = read_tf_config()
    workers = num_workers(tf_config)
    if name == "multiworker" and tf_config is None:
        raise ImagerecError(
            "strategy 'multiworker' needs a TF_CONFIG describing the cluster; see docs/scaling.md"
        )
    gpus = len(tf.config.list_physical_devices("GPU"))
    if name == "multiworker" or (name == "auto" and workers > 1):
        t0 = time.perf_counter()
        strategy = _multiworker_strategy()
        chosen = "multiworker"
        print(f"imagerec: task {task_name(tf_config)} joined a cluster of {workers} workers in "
              f"{time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)  # fmt: skip
    elif name == "mirrored" or (name == "auto" and gpus > 1):
        strategy = _structured_reduce(tf.distribute.MirroredStrategy)()
        chosen = "mirrored"
    else:
        strategy = tf.distribute.get_strategy()
        chosen = "default"
    info: dict[str, Any] = {
        "name": chosen,
        "replicas": int(strategy.num_replicas_in_sync),
        "workers": workers,
        "gpus": gpus,
    }
    if tf_config:
        info["task"] = tf_config["task"]
        info["chief"] = is_chief(tf_config)
    return strategy, info


def scale_for_replicas(batch_size: int, learning_rate: float, replicas: int) -> dict[str, Any]:
    """Global batch (per-replica batch x replicas) and the linearly scaled peak learning rate."""
    return {
        "per_replica_batch_size": int(batch_size),
        "global_batch_size": int(batch_size) * max(1, replicas),
        "base_learning_rate": float(learning_rate),
        "learning_rate": float(learning_rate) * max(1, replicas),
        "lr_scaling": "linear",
    }


def shard_by_data(ds):
    """Ask ``tf.data`` to shard ``ds`` across workers by data (each worker keeps every N-th batch)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def worker_callbacks(info: dict[str, Any], log) -> list:
    """A callback that logs ``task`` and steps per epoch on each worker of a cluster (empty list otherwise)."""
    if info.get("name") != "multiworker":
        return []
    import keras

    name = f"{info['task']['type']}:{info['task']['index']}"

    class WorkerLog(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1

        def on_epoch_end(self, epoch, logs=None):
            loss = (logs or {}).get("loss")
            log(f"worker {name} epoch {epoch + 1}: {self.steps} steps, loss {float(loss):.4f}")

    return [WorkerLog()]


@contextlib.contextmanager
def worker_run(
    out: str | os.PathLike, resume: bool, prepare, force: bool = False
) -> Iterator[tuple[Path, dict[str, Any] | None]]:
    """Yield ``(run_path, previous_config)`` for this process.

    The chief (and a single process) gets ``out`` itself, checked by ``prepare(resume)``. Any other worker gets a
    private temporary directory, removed on exit; on resume it holds a copy of the chief's checkpoint and split.
    In a cluster, a run that already has a checkpoint is resumed unless ``force`` (a restarted cluster rejoins,
    as Keras ``BackupAndRestore`` does); a failed peer becomes one readable :class:`ImagerecError`.
    """
    from imagerec.errors import RunError
    from imagerec.run import RunDir

    tf_config = read_tf_config()
    cluster = num_workers(tf_config) > 1
    shared = RunDir(out)
    if (
        cluster
        and not resume
        and not force
        and (shared.backup / "latest").exists()
        and shared.config.exists()
    ):
        print(f"imagerec: task {task_name(tf_config)}: {out} has a checkpoint; rejoining it (--force starts over)",
              file=sys.stderr, flush=True)  # fmt: skip
        resume = True
    tmp = (
        None
        if is_chief(tf_config)
        else Path(tempfile.mkdtemp(prefix=f"imagerec-{task_name().replace(':', '')}-"))
    )
    try:
        if tmp is None:
            yield Path(out), prepare(resume)
            return
        previous = None
        if resume:
            if not shared.config.exists():
                raise RunError(f"nothing to resume in {str(out)!r} as seen from task {task_name()}: the run directory "
                               "must be on a path every worker can read")  # fmt: skip
            previous = shared.read_config()
            shutil.copy2(shared.manifest, tmp / shared.manifest.name)
            if shared.backup.exists():
                shutil.copytree(shared.backup, tmp / shared.backup.name)
        yield tmp, previous
    except Exception as exc:
        if cluster and type(exc).__module__.startswith("tensorflow"):
            raise ImagerecError(_cluster_failure(exc, out)) from None
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _cluster_failure(exc: Exception, out) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = next(
        (ln for ln in lines if "unhealthy" in ln or "heartbeat" in ln or "crashed" in ln),
        lines[0] if lines else "",
    )
    dead = next((ln for ln in lines if ln.startswith("/job:")), "")
    return (f"multi-worker training stopped on task {task_name()}: a peer failed or left ({type(exc).__name__}: "
            f"{reason[:200]}{' ' + dead if dead else ''}); the last complete epoch is in {out}/backup; restart every "
            "worker with the same command to rejoin from it")  # fmt: skip
