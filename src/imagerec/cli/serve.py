"""``imagerec serve RUN``: the HTTP service (FastAPI + uvicorn) with the web page, v1 and KServe v2 APIs."""

from __future__ import annotations

from pathlib import Path

import typer

from imagerec.cli.app import app
from imagerec.cli.options import option, options_of
from imagerec.errors import ImagerecError
from imagerec.settings import RUNTIME, RaySettings, ServeSettings

setting = options_of(ServeSettings)
RUNTIME_HELP = "keras | tflite | onnx | savedmodel (exported runtimes need 'imagerec export' first)."


@app.command("serve")
def serve(
    run: Path = typer.Argument(None, help="Run directory written by 'imagerec train' (or use --models DIR)."),
    models: Path = typer.Option(
        None,
        "--models",
        help="Folder of versions (run directories; natural sort of names, newest last): serve the newest that "
        "passes a self-check; POST /v1/admin/reload swaps versions.",
    ),
    host: str = setting("host", help="Address to bind; 0.0.0.0 exposes the service to the network."),
    port: int = setting("port", help="TCP port."),
    api_key: str = setting(
        "api_key", "--api-key", envvar="IMAGEREC_API_KEY", help="Require this key (X-API-Key header)."
    ),
    workers: int = setting("workers", help="Server processes (each loads the model)."),
    max_batch: int = setting("max_batch", "--max-batch", help="Most images per model call."),
    max_wait_ms: float = setting(
        "max_wait_ms", "--max-wait-ms", help="Longest wait of a batch's first image for company (0 = none)."
    ),
    max_queue: int = setting(
        "max_queue", "--max-queue", help="Images waiting beyond which requests get 503."
    ),
    max_upload_mb: float = setting(
        "max_upload_mb", "--max-upload-mb", help="Largest request body (413 beyond)."
    ),
    max_files: int = setting("max_files", "--max-files", help="Most files in one request."),
    timeout_s: float = setting("timeout_s", "--timeout-s", help="Request deadline (504 beyond)."),
    cors_origin: list[str] = setting(
        "cors_origins", "--cors-origin", help="Allow this browser origin (repeatable); off by default."
    ),
    cors_allow_credentials: bool = setting(
        "cors_credentials", "--cors-allow-credentials", help="Let allowed origins send credentials."
    ),
    rate_limit: float = setting(
        "rate_limit",
        "--rate-limit",
        help="Requests per second per API key (or client IP), burst = N; 429 beyond. 0 = off.",
    ),
    decode_workers: int = setting(
        "decode_workers",
        "--decode-workers",
        help="Processes that decode uploads (a crashing decoder fails one request); 0 = in-thread. A plain "
        "PNG of the model's input size up to 64x64 (8-bit, no palette, alpha, gamma, profile or EXIF) is decoded "
        "in-process by OpenCV.",
    ),
    threshold: float = setting(
        "threshold",
        "--threshold",
        help="Answer 'unknown' below this confidence (default: the run's calibrated threshold, if any; 0 = off).",
    ),
    stall_s: float = setting(
        "stall_s",
        "--stall-s",
        help="Abandon a model call stuck this long and start a fresh model worker (0 = 2 x --timeout-s).",
    ),
    max_stalled: int = setting(
        "max_stalled",
        "--max-stalled",
        help="Stuck model calls at once before /readyz answers 503 (restart the server).",
    ),
    watch_s: float = setting(
        "watch_s",
        "--watch-s",
        help="With --models: look at DIR every S seconds; a new version is swapped in, and every worker follows "
        "an admin reload. 0 = off.",
    ),
    record: str = setting(
        "record",
        "--record",
        help="Record every answer to this folder (JSON lines: label, scores, OOD score, embedding, image hash) and "
        "the pictures worth reviewing; off by default. A folder that cannot be written stops recording, not serving.",
    ),
    record_images: str = setting(
        "record_images",
        "--record-images",
        help="With --record: review (keep the pictures of unknown, low-confidence, out-of-distribution answers and "
        "a 1% sample) | none (no pixels stored).",
    ),
    drift_window: int = setting(
        "drift_window",
        "--drift-window",
        help="Drift gauges on /metrics over the last N answers vs the run's validation answers (0 = off).",
    ),
    review: str = setting(
        "review",
        "--review",
        help="A queue written by 'imagerec review': the page's Review tab and /v1/review/* (behind --api-key).",
    ),
    review_out: str = setting(
        "review_out",
        "--review-out",
        help="With --review: the dataset the labels go to (class folders; labels.csv for a multi-label run).",
    ),
    runtime: str = typer.Option(
        RUNTIME,
        help="auto (the fastest of keras and the exports that answer like it) | auto-quantized | "
        + RUNTIME_HELP,
    ),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Serve as a Ray Serve deployment (replicas restarted when they die); see docs/scaling.md.",
    ),
    replicas: int = option(
        RaySettings, "replicas", "--replicas", help="With --ray: replicas (each loads the model)."
    ),
    autoscale: str = typer.Option(
        None, "--autoscale", metavar="MIN,MAX", help="With --ray: scale between MIN and MAX replicas on load."
    ),
    replica_cpus: float = option(
        RaySettings, "replica_cpus", "--replica-cpus", help="With --ray: CPUs each replica reserves."
    ),
    ray_address: str = option(
        RaySettings,
        "address",
        "--ray-address",
        help="With --ray: the Ray cluster (host:port, ray://host:10001); default: a local instance.",
    ),
) -> None:
    """Serve RUN over HTTP: web page at /, POST /v1/predict, KServe v2 at /v2, /healthz, /readyz, /metrics."""
    import uvicorn

    from imagerec.classifier import Classifier
    from imagerec.server.app import create_app
    from imagerec.server.versions import ModelDir
    from imagerec.server.workers import settings_to_env

    settings = ServeSettings(
        host=host, port=port, api_key=api_key or None, workers=workers, max_batch=max_batch,
        max_wait_ms=max_wait_ms, max_queue=max_queue, max_upload_mb=max_upload_mb, max_files=max_files,
        timeout_s=timeout_s, cors_origins=tuple(cors_origin), cors_credentials=cors_allow_credentials,
        rate_limit=rate_limit, decode_workers=decode_workers, threshold=threshold, stall_s=stall_s,
        max_stalled=max_stalled, watch_s=watch_s, record=record or None, record_images=record_images,
        review=review or None, review_out=review_out or None, drift_window=drift_window,
    ).validate()  # fmt: skip
    options = dict(
        host=host,
        port=port,
        log_level=log_level,
        loop=_best("uvloop", "auto"),
        http=_best("httptools", "auto"),
    )
    if (run is None) == (models is None):
        raise ImagerecError(
            "give a run directory RUN or --models DIR (a folder of versions), exactly one of them"
        )
    if models is not None and workers > 1 and watch_s <= 0:
        raise ImagerecError(
            f"--models with --workers {workers} needs --watch-s > 0: an admin reload reaches one worker, the "
            "others follow it by watching DIR"
        )
    ray_settings = ray_serve_settings(ray, replicas, autoscale, replica_cpus, ray_address, workers)
    check_port_free(
        host, port
    )  # before the model loads: a busy port is a one-line error, not a traceback later
    model_dir, version = None, ""
    if models is not None:
        model_dir = ModelDir(models, runtime)
        version, clf, skipped = model_dir.pick()
        for refused in skipped:
            typer.echo(f"imagerec: version {refused['version']} refused: {refused['reason']}", err=True)
        run = model_dir.path(version)
    else:
        clf = Classifier.load(
            run, runtime=runtime
        )  # in multi-worker mode too: fail fast here, not in each worker
    key_note = "API key required" if settings.api_key else "no API key"
    typer.echo(
        f"imagerec: serving {run} on http://{host}:{port} ({workers} worker(s), {key_note}, "
        f"runtime={clf.runtime})",
        err=True,
    )
    if ray_settings is not None:
        from imagerec.distributed.ray_serve import serve_with_ray

        del clf
        if models is not None and (ray_settings.autoscale or ray_settings.replicas > 1) and watch_s <= 0:
            raise ImagerecError(
                "--models with several --ray replicas needs --watch-s > 0 (replicas follow DIR)"
            )
        serve_with_ray(
            str(run),
            runtime,
            settings,
            ray_settings,
            str(models or ""),
            log=lambda m: typer.echo(m, err=True),
        )
        return
    if workers > 1:
        del clf
        settings_to_env(str(run), runtime, settings, str(models or ""))
        uvicorn.run("imagerec.server.workers:app_from_env", factory=True, workers=workers, **options)
        return
    uvicorn.run(create_app(clf, settings, model_dir, version), **options)


def ray_serve_settings(
    ray: bool, replicas: int, autoscale: str | None, replica_cpus: float, address: str | None, workers: int
) -> RaySettings | None:
    """The ``--ray`` options as settings (None without ``--ray``), each misuse a one-line error."""
    bounds: tuple[int, ...] = ()
    if autoscale is not None:
        try:
            bounds = tuple(int(part) for part in autoscale.split(","))
        except ValueError:
            raise ImagerecError(f"--autoscale takes MIN,MAX (two whole numbers), got {autoscale!r}") from None
    settings = RaySettings(replicas=replicas, autoscale=bounds, replica_cpus=replica_cpus, address=address).validate()
    given = [flag for flag, value, default in (
        ("--replicas", replicas, RaySettings.replicas), ("--autoscale", autoscale, None),
        ("--replica-cpus", replica_cpus, RaySettings.replica_cpus), ("--ray-address", address, None),
    ) if value != default]  # fmt: skip
    if not ray:
        if given:
            raise ImagerecError(f"{given[0]} needs --ray")
        return None
    if workers > 1:
        raise ImagerecError("--workers is for uvicorn processes; with --ray use --replicas N or --autoscale MIN,MAX")
    if autoscale is not None and replicas != RaySettings.replicas:
        raise ImagerecError("give --replicas N or --autoscale MIN,MAX, not both")
    return settings


def check_port_free(host: str, port: int) -> None:
    """Raise a one-line :class:`ImagerecError` when ``host:port`` cannot be bound (in use, not ours, privileged)."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ImagerecError(f"--host {host!r} is not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            why = {
                errno.EADDRINUSE: "is already in use (another server?)",
                errno.EACCES: "needs root (ports below 1024)",
                errno.EADDRNOTAVAIL: "is not an address of this machine",
            }.get(exc.errno, f"cannot be bound ({exc.strerror})")
            raise ImagerecError(f"{host}:{port} {why}; choose another with --port N (or --host)") from None


def _best(module: str, fallback: str) -> str:
    import importlib.util

    return module if importlib.util.find_spec(module) else fallback
