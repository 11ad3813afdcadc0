"""``imagerec serve RUN --ray``: the same service as a Ray Serve deployment, on one machine or a Ray cluster.

Each replica is a Ray actor that builds the app of ``imagerec serve`` (:func:`imagerec.server.workers.app_from_env`,
the path ``--workers N`` takes: web page, v1, KServe v2, /metrics, limits, API key, decode processes, the dynamic
batcher, so batching happens inside each replica) from the environment Ray gives the actor. Ray Serve's HTTP proxy
listens on ``--host``/``--port`` and spreads requests over the replicas; its controller restarts a replica that dies
or fails its health check (:meth:`Replica.check_health`: the service's model worker is stuck, as ``/readyz`` says),
and with ``--autoscale MIN,MAX`` adds and removes replicas on the requests in flight per replica (target: one
batch, ``--max-batch``).

Every replica reads the run (or ``--models DIR``) from its own file system: on a cluster, put it on a path every
node mounts. The API key travels in the replicas' runtime environment (visible to whoever can read the Ray
cluster's state). Ray is imported here only (``pip install 'imagerec[distributed]'``).
"""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagerec.distributed.ray import init_ray
from imagerec.errors import ImagerecError
from imagerec.settings import RaySettings, ServeSettings

APP_NAME = "imagerec"  # the Ray Serve application (and deployment) name


class Replica:
    """One Ray Serve replica: the ``imagerec serve`` app, built when Ray starts the actor."""

    app: Any = None

    def __serve_build_asgi_app__(self):
        from imagerec.server.workers import app_from_env

        self.app = app_from_env()
        return self.app

    def check_health(self) -> None:
        """Ray Serve calls this every few seconds; raising makes the controller replace the replica."""
        service = getattr(self.app, "service", None)
        if service is not None and service.batcher is not None and not service.batcher.healthy:
            raise RuntimeError(f"{service.batcher.stalled} model calls are stuck")

    def replica_info(self) -> dict[str, Any]:
        """This replica's process id and how many images it has answered (for tests and operators)."""
        service = getattr(self.app, "service", None)
        answered = 0.0
        if service is not None:
            for metric in service.metrics.predictions.collect():
                answered += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        return {"pid": os.getpid(), "answered": int(answered), "ready": bool(service and service.ready)}


def deployment_options(settings: ServeSettings, ray_settings: RaySettings, env: dict[str, str]) -> dict:
    """The ``serve.deployment`` options: replicas (fixed or autoscaled), per-replica CPUs and concurrency."""
    options: dict[str, Any] = {
        "name": APP_NAME,
        # the replica's own queue (--max-queue, 503 beyond) bounds what it holds; Ray's default of 5 would starve
        # the batcher
        "max_ongoing_requests": settings.max_queue,
        # beyond that many waiting in Ray's router as well, the proxy answers 503 instead of queueing without end
        "max_queued_requests": settings.max_queue,
        "ray_actor_options": {"num_cpus": ray_settings.replica_cpus, "runtime_env": {"env_vars": env}},
        "health_check_period_s": 5.0,
        "graceful_shutdown_timeout_s": settings.timeout_s,
    }
    if ray_settings.autoscale:
        lo, hi = ray_settings.autoscale
        options["autoscaling_config"] = {
            "min_replicas": lo,
            "initial_replicas": max(lo, 1),
            "max_replicas": hi,
            "target_ongoing_requests": settings.max_batch,
        }
    else:
        options["num_replicas"] = ray_settings.replicas
    return options


def most_replicas(ray_settings: RaySettings) -> int:
    return ray_settings.autoscale[1] if ray_settings.autoscale else ray_settings.replicas


def serve_with_ray(
    run: str,
    runtime: str,
    settings: ServeSettings,
    ray_settings: RaySettings,
    models: str = "",
    log: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> None:
    """Deploy the service on Ray Serve and keep it up until SIGINT/SIGTERM (or ``stop`` is set); then delete it
    (and stop the local Ray instance this call started)."""
    from imagerec.server.workers import settings_env

    # a Ray instance this call starts is this call's to stop; one already initialised in the process is not
    local = ray_settings.address is None and not _ray_initialized()
    # a local instance gets enough logical CPUs for every replica (more replicas than cores share them, as
    # --workers N would); a cluster's resources are its own
    cpus = max(os.cpu_count() or 1, math.ceil(most_replicas(ray_settings) * ray_settings.replica_cpus))
    ray = init_ray(ray_settings.address, num_cpus=cpus)
    from ray import serve

    # replicas on other nodes resolve paths against their own working directory: hand them absolute ones
    env = settings_env(str(Path(run).resolve()), runtime, settings, str(Path(models).resolve()) if models else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    env["IMAGEREC_NUM_THREADS"] = str(max(1, math.floor(ray_settings.replica_cpus)))
    stop = stop or threading.Event()
    serving = threading.Event()

    def on_signal(*_):
        if not serving.is_set():  # still deploying: interrupt the wait (the cleanup below runs)
            raise KeyboardInterrupt
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    deployed = False
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        if APP_NAME in serve.status().applications:
            raise ImagerecError(
                f"a Ray Serve application named {APP_NAME!r} is already running on this Ray cluster; stop it first "
                "(serve shutdown, or Ctrl-C in its imagerec serve --ray)"
            )
        app = serve.deployment(**deployment_options(settings, ray_settings, env))(serve.ingress()(Replica))
        deployed = True
        try:
            serve.run(app.bind(), name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as exc:
            raise ImagerecError(
                f"Ray Serve could not start the replicas: {str(exc).splitlines()[0][:300]}"
            ) from None
        scale = (
            f"{ray_settings.autoscale[0]}-{ray_settings.autoscale[1]} replicas (autoscaled)"
            if ray_settings.autoscale
            else f"{ray_settings.replicas} replica(s)"
        )
        where = "a local Ray instance" if local else "the Ray cluster"
        serving.set()
        log(
            f"imagerec: Ray Serve is serving on http://{settings.host}:{settings.port} with {scale} on {where} "
            f"at {ray.get_runtime_context().gcs_address}; Ctrl-C stops it"
        )
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            if deployed:
                serve.delete(APP_NAME)
            if local:
                serve.shutdown()
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the error that brought us here
            log(f"imagerec: Ray Serve cleanup: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}")
        finally:
            if local:
                ray.shutdown()


def _ray_initialized() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()
