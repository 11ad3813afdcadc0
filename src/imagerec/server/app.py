"""The HTTP service: ``create_app(classifier, settings)`` builds a FastAPI app around one loaded Classifier.

Example:
    >>> import uvicorn
    >>> from imagerec import Classifier
    >>> from imagerec.server.app import create_app
    >>> from imagerec.settings import ServeSettings
    >>> uvicorn.run(create_app(Classifier.load("runs/fmnist"), ServeSettings()), host="127.0.0.1", port=8000)

No route loads or names a model file, except ``POST /v1/admin/reload`` on a server started with ``--models DIR``:
it swaps to another version of DIR (server/versions.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.classifier import EMASmoother
from imagerec.data.images import decode_plain_png
from imagerec.errors import ImageRejected
from imagerec.server import recording, watch
from imagerec.server.batching import Batcher, QueueFull, WorkerStalled
from imagerec.server.decoding import DecodePool, DecoderCrashed
from imagerec.server.drift import DriftGauges, drift_monitor
from imagerec.server.limits import HTTPError, LimitsMiddleware
from imagerec.server.metrics import ServerMetrics
from imagerec.server.responses import error_response, internal_error_response, json_response
from imagerec.server.versions import ModelDir, versions_stay_collectable
from imagerec.settings import ServeSettings

STATIC = Path(__file__).with_name("static")
SMALL_UPLOAD = 256 * 1024  # bytes; smaller uploads are decoded in the batcher's worker thread
#: with decode processes, a plain PNG of a model input up to this many pixels is decoded on the event loop (one
#: OpenCV call after checks bounded by its size: ~15 us at 28x28, less than the round trip to a process)
TINY_PIXELS = 64 * 64
_SESSION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
    "connect-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'"
)


class Service:
    """What the routes share: the classifier, decode pool, batcher, metrics and camera-session smoothers."""

    def __init__(
        self, classifier, settings: ServeSettings, models: ModelDir | None = None, version: str = ""
    ):
        self.clf = classifier
        self.settings = settings
        self.metrics = ServerMetrics(classifier.labels)
        self.batcher = self.new_batcher(classifier)
        # --models DIR: the versions, the one served (name and directory), the last reload's refusals
        self.models = models
        self.model_version = version or None
        self.version_dir = str(classifier.run_dir.path) if models is not None else None
        self.reload_error: str | None = None
        self.reload_lock = asyncio.Lock()
        self.decode_pool = concurrent.futures.ThreadPoolExecutor(
            settings.decode_threads, thread_name_prefix="imagerec-decode"
        )
        self.decode_procs: DecodePool | None = None  # started with the service (--decode-workers >= 1)
        self.sessions: OrderedDict[str, EMASmoother] = OrderedDict()
        self.ready = False
        self.input_shape = (classifier.image_size, classifier.image_size, classifier.channels)
        self.recorder = recording.recorder_for(settings, classifier)  # --record DIR; None = nothing recorded
        self.metrics.registry.register(recording.RecordingCollector(self))
        # the threshold in force (for /v1/model): --threshold, else the run's calibrated one; 0 = off
        self.threshold = classifier.threshold_for(settings.threshold)
        self.metrics.set_model(version or classifier.version, classifier.name, classifier.runtime)
        self.watcher: watch.Watcher | None = None  # --models DIR: follows new versions (server/watch.py)
        self.drift = None  # the drift monitor (server/drift.py), set at start; None = no drift gauges
        self.drift_gauges = DriftGauges(self.metrics.registry)

    def new_batcher(self, classifier) -> Batcher:
        """A batcher around ``classifier`` (each served version gets its own; see server/versions.py)."""
        settings = self.settings
        # calibrated probabilities + the OOD score column (+ the embedding when recording), one row per image
        scores = classifier.predict_scores
        if settings.record:
            scores = functools.partial(scores, embedding=True)
        return Batcher(
            scores,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            on_batch=self.metrics.batch_size.observe,
            prepare=classifier.preprocess,
            stall_s=settings.stall_s or 2 * settings.timeout_s,
            max_stalled=settings.max_stalled,
            on_recycle=self.metrics.recycles.inc,
        )

    def install(self, classifier, batcher: Batcher, version: str, version_dir: Path) -> Batcher:
        """Serve ``classifier`` through its started ``batcher`` from now on; returns the old batcher.

        Synchronous on the event loop: every request after this sees the new model, batcher and threshold
        together; images already queued are answered by the old batcher.
        """
        old = self.batcher
        self.clf, self.batcher = classifier, batcher
        self.threshold = classifier.threshold_for(self.settings.threshold)
        self.model_version, self.version_dir = version, str(version_dir)
        self.metrics.set_model(version, classifier.name, classifier.runtime)
        self.drift = drift_monitor(classifier, self.settings, build=False)  # a version's own drift.json
        return old

    async def reload(self, version: str | None) -> dict[str, Any]:
        """Swap to ``version`` of ``--models DIR`` (None: the newest that passes); see server/versions.py."""
        from imagerec.server import versions

        return await versions.reload(self, version)

    async def start(self) -> None:
        if self.settings.decode_workers >= 1:  # the processes start while the model warms up
            clf = self.clf
            size = (clf.image_size, clf.image_size)
            self.decode_procs = DecodePool(self.settings.decode_workers, size, clf.channels, clf.resize)
        if self.recorder is not None:
            self.recorder.start()
        self.drift = await asyncio.to_thread(drift_monitor, self.clf, self.settings)
        await self.batcher.start()
        from imagerec.data import png

        await asyncio.to_thread(png.warm_up)  # OpenCV, for the plain PNGs decoded in this process
        await self.batcher.warm_up(self.input_shape)  # trace the model and set up every bucket's kernels
        if self.decode_procs is not None:
            await asyncio.get_running_loop().run_in_executor(self.decode_pool, self.decode_procs.warm_up)
        # --models: the imports were frozen before the first version loaded; its versions stay collectable
        self.model_frozen = not versions_stay_collectable(self)
        if self.model_frozen:
            freeze_heap()
        self.watcher = watch.start(self)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        import gc

        gc.unfreeze()  # an app embedded in a longer-lived process hands its heap back to the collector
        if self.watcher is not None:
            await self.watcher.stop()
        await self.batcher.stop()
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.stop)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        if self.decode_procs is not None:
            self.decode_procs.close()  # on the loop: its pipes are watched by the loop
            await asyncio.to_thread(self.decode_procs.join, 10.0)

    async def decode(self, data: bytes, name: str | None = None) -> np.ndarray | bytes:
        """Small uploads go to the batcher as bytes and are decoded in its worker thread, inside their batch (one
        thread hop per batch, not per request); larger ones are decoded in the decode pool first. Both run
        ``Classifier.preprocess`` off the event loop. With ``decode_workers >= 1`` every upload is decoded in a decode
        process instead (same ``load_image`` call, same arrays; a crash there answers 503), except a plain PNG of a
        model input of at most ``TINY_PIXELS`` (``imagerec.data.png.plain_png``), decoded here by one OpenCV call; when
        OpenCV is missing or refuses it, it goes to the process too (Pillow never decodes in this process)."""
        clf = self.clf
        if self.decode_procs is not None:
            if clf.image_size**2 <= TINY_PIXELS:  # a tiny plain PNG: one OpenCV call here, else the process
                array = decode_plain_png(data, (clf.image_size, clf.image_size), clf.channels)
                if array is not None:
                    return array
            try:
                return await self.decode_procs.decode(data)
            except ImageRejected as exc:
                raise _rejected(exc, name) from None
            except DecoderCrashed:
                raise HTTPError(
                    503,
                    "decoder_crashed",
                    "the image decoder crashed on this request (the server keeps running); "
                    "retry, or check that the file is a valid image",
                    {"Retry-After": "1"},
                ) from None
        if len(data) <= SMALL_UPLOAD:
            return data
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.decode_pool, self.clf.preprocess, data)
        except ImageRejected as exc:
            raise _rejected(exc, name) from None

    async def infer(
        self, images: list[np.ndarray | bytes], names: list[str | None] | None = None
    ) -> np.ndarray:
        """Probabilities ``(N, K)`` of images (arrays or small encoded files), through the dynamic batcher."""
        futures = []
        try:
            for image in images:
                futures.append(self.batcher.submit(image))
        except QueueFull as exc:
            for future in futures:
                future.cancel()
            raise HTTPError(
                503, "overloaded", f"server busy: {exc}; retry after 1 s", {"Retry-After": "1"}
            ) from None
        finally:
            self.metrics.queue_depth.set(self.batcher.depth)
        try:
            if len(futures) == 1:  # one upload: no gather (a task) on the event loop
                try:
                    rows = [await futures[0]]
                except Exception as exc:  # noqa: BLE001 - sorted out below, as gather's return_exceptions
                    rows = [exc]
            else:
                rows = await asyncio.gather(*futures, return_exceptions=True)
        finally:
            for future in futures:
                future.cancel()  # a no-op on finished ones; drops the rest when the client is gone
        for index, row in enumerate(rows):
            if isinstance(row, ImageRejected):
                raise _rejected(row, (names or [None] * len(rows))[index])
            if isinstance(row, WorkerStalled):
                raise HTTPError(503, "model_stalled", f"{row}; retry", {"Retry-After": "1"})
            if isinstance(row, BaseException):
                raise row
        return rows[0][None] if len(rows) == 1 else np.stack(rows)

    def results(self, probs: np.ndarray, top_k: int, names: list[str | None], data=None, arrays=None):
        """The answers to ``probs`` (rows of ``Classifier.predict_scores``: calibrated probabilities and the OOD
        score; ``Classifier.answers`` with ``--threshold``), counted by label and recorded (``--record``) with
        the uploaded files ``data`` (or the decoded ``arrays``; server/recording.py)."""
        preds = self.clf.answers(probs, top_k, self.settings.threshold, names)
        for pred in preds:
            self.metrics.count_prediction(pred.label)
        if self.drift is not None:
            self.drift.add(preds)
        if self.recorder is not None:
            recording.record(self, preds, probs, data, arrays)
        return preds

    def smoothed(self, session: str, alpha: float, probs: np.ndarray):
        """The camera session's answer: ``probs`` folded into its EMA, then labelled like an upload."""
        state = self.smoother(session, alpha).update(probs)
        return self.clf.answers(state[None], 1, self.settings.threshold)[0]

    def smoother(self, session: str, alpha: float) -> EMASmoother:
        if not _SESSION_RE.match(session):
            raise HTTPError(400, "bad_request", "session must be 1-64 characters of A-Z a-z 0-9 _ . -")
        smoother = self.sessions.pop(session, None)
        if smoother is None:
            smoother = EMASmoother(alpha)
        smoother.alpha = alpha
        self.sessions[session] = smoother
        while len(self.sessions) > self.settings.max_sessions:
            self.sessions.popitem(last=False)
        return smoother

    @property
    def serving(self) -> bool:
        """Ready: warmed up, and fewer than ``max_stalled`` abandoned model workers are stuck."""
        return self.ready and self.batcher.healthy

    def model_info(self) -> dict[str, Any]:
        info = {"name": self.clf.name, "version": self.clf.version}
        if self.models is not None:  # --models DIR: which version answers, and from where
            info |= {"model_version": self.model_version, "version_dir": self.version_dir}
        return info


def freeze_heap() -> None:
    """Move every object alive after start-up (TensorFlow, Keras and the model: millions of them) out of the
    garbage collector's reach, as long-running servers do (CPython's ``gc.freeze``).

    Otherwise each full collection walks that whole heap while the event loop waits: measured as 0.25-0.3 s
    pauses a few times in 10 s under load, which set the p99 latency.
    """
    import gc

    gc.collect()
    gc.freeze()


def _rejected(exc: ImageRejected, name: str | None) -> HTTPError:
    label = f"{name}: " if name else ""
    return HTTPError(exc.status, exc.code, label + str(exc).replace("<bytes>: ", "", 1))


def create_app(
    classifier, settings: ServeSettings | None = None, models: ModelDir | None = None, version: str = ""
):
    """Build the service around ``classifier`` (see the module docstring); returns the outermost ASGI app.

    With ``models`` (``--models DIR``), ``classifier`` is its version ``version`` and ``POST /v1/admin/reload``
    swaps it for another version without downtime (server/versions.py).

    The returned app exposes ``.service`` (shared state) and ``.fastapi`` (the inner FastAPI app).
    """
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.middleware.cors import CORSMiddleware
    from starlette.responses import FileResponse, Response
    from starlette.staticfiles import StaticFiles

    from imagerec.server import routes_review, routes_v1, routes_v2

    settings = (settings or ServeSettings()).validate()
    service = Service(classifier, settings, models, version)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    api = FastAPI(title="imagerec", version=service.clf.version, lifespan=lifespan)
    api.state.service = service

    @api.exception_handler(HTTPError)
    async def _http_error(_request, exc: HTTPError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @api.exception_handler(StarletteHTTPException)
    async def _starlette_error(_request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, "bad_request", f"{where}: {first.get('msg', 'invalid request')}")

    @api.exception_handler(Exception)
    async def _unexpected(_request, exc: Exception):
        return internal_error_response(exc)

    @api.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    api.mount("/static", StaticFiles(directory=STATIC), name="static")

    @api.get("/healthz")
    async def healthz():
        return json_response({"status": "ok"})

    @api.get("/readyz")
    async def readyz():
        if not service.ready:
            return error_response(503, "not_ready", "model is still warming up")
        if not service.batcher.healthy:
            return error_response(
                503,
                "model_stalled",
                f"{service.batcher.stalled} model calls are stuck (the cap is {settings.max_stalled}); "
                "restart the server",
            )
        return json_response({"status": "ready", "model": service.model_info()})

    @api.get("/metrics")
    async def metrics():
        service.metrics.queue_depth.set(service.batcher.depth)
        service.metrics.stalled.set(service.batcher.stalled)
        service.drift_gauges.show(service.drift)
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    routes_v1.register(api, service)
    routes_v2.register(api, service)
    routes_review.register(api, service)  # --review QUEUE: the Review tab's routes (none without it: 404)

    app: Any = routes_v1.FastPredict(api, service)  # POST /v1/predict without FastAPI's stack (same answers)
    if settings.cors_origins:
        app = CORSMiddleware(
            app,
            allow_origins=list(settings.cors_origins),
            allow_credentials=settings.cors_credentials,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
        )
    from imagerec.server.ratelimit import RateLimiter

    limiter = RateLimiter(settings.rate_limit) if settings.rate_limit > 0 else None
    outer = LimitsMiddleware(
        app, settings.max_body, settings.api_key, settings.timeout_s, service.metrics.observe, limiter
    )
    outer.service = service  # type: ignore[attr-defined]
    outer.fastapi = api  # type: ignore[attr-defined]
    return outer
