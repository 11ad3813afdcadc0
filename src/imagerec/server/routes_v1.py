"""``POST /v1/predict``, ``GET /v1/model`` and ``POST /v1/admin/reload``: parse input, call the service, format output."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request  # module level: FastAPI resolves the annotation by name

from imagerec.server import recording, watch
from imagerec.server.limits import HTTPError
from imagerec.server.responses import error_response, internal_error_response, json_response
from imagerec.server.uploads import Upload, parse_multipart
from imagerec.utils import read_json

log = logging.getLogger("imagerec.server")


def _query_int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise HTTPError(
            400, "bad_request", f"?{name}={value[:20]!r} is not an integer; expected {low}..{high}"
        ) from None
    if not low <= number <= high:
        raise HTTPError(400, "bad_request", f"?{name}={number} is out of range; expected {low}..{high}")
    return number


def _query_alpha(value: str | None) -> float:
    try:
        alpha = float(value) if value is not None else 0.6
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha < 1.0:
        raise HTTPError(
            400, "bad_request", f"?smooth={str(value)[:20]!r} must be a number in [0, 1) (0 = off)"
        )
    return alpha


def uploads_of(body: bytes, content_type: str, filename: str | None, max_files: int) -> list[Upload]:
    """The images of a request: multipart field ``file`` (one or more), or the raw body (named by ``X-Filename``)."""
    if content_type.lower().startswith("multipart/form-data"):
        return parse_multipart(body, content_type, max_files)
    if content_type.lower().startswith("application/x-www-form-urlencoded"):
        raise HTTPError(
            400,
            "missing_file",
            "a url-encoded form carries no file; send multipart field 'file' or a raw image body",
        )
    if not body:
        raise HTTPError(
            400, "empty", "empty request body; send an image as the raw body or as multipart field 'file'"
        )
    return [Upload(filename, body)]


async def read_uploads(request, max_files: int) -> list[Upload]:
    """The images of a Starlette request (see :func:`uploads_of`)."""
    body = await request.body()
    headers = request.headers
    return uploads_of(body, headers.get("content-type", ""), headers.get("x-filename"), max_files)


async def _reload_version(request) -> str | None:
    """The optional ``{"version": NAME}`` body of ``POST /v1/admin/reload``."""
    body = await request.body()
    if not body.strip():
        return None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or set(data) - {"version"} or not isinstance(data.get("version", ""), str):
        raise HTTPError(
            400,
            "bad_request",
            'expected no body or a JSON object {"version": "NAME"} (a directory of --models)',
        )
    return data.get("version")


async def predict_answer(service, query, uploads: list[Upload]) -> dict[str, Any]:
    """The body of ``POST /v1/predict``: ``query`` (a mapping: ``top_k``, ``session``, ``smooth``) and the request's
    images -> ``{"predictions": [...], "model": {...}}``. Both ways in (the FastAPI route, :class:`FastPredict`) call it.

    Raises:
        HTTPError: a bad query, an empty or unreadable image, a full queue, a stalled model.
    """
    num_classes = len(service.clf.labels)
    top_k = _query_int(query.get("top_k"), "top_k", min(5, num_classes), 1, num_classes)
    session = query.get("session")
    alpha = _query_alpha(query.get("smooth")) if session else 0.0
    for upload in uploads:
        if not upload.data:
            name = upload.filename or "file"
            raise HTTPError(400, "empty", f"{name}: empty file (0 bytes)")
    if len(uploads) == 1:  # the common case, without a gather (a task per upload) on the event loop
        images = [await service.decode(uploads[0].data, uploads[0].filename)]
    else:
        images = await asyncio.gather(*(service.decode(u.data, u.filename) for u in uploads))
    probs = await service.infer(list(images), [u.filename for u in uploads])
    preds = service.results(probs, top_k, [None] * len(uploads), [u.data for u in uploads])
    out: list[dict[str, Any]] = []
    for upload, pred, row in zip(uploads, preds, probs, strict=True):
        item = {"filename": upload.filename, **pred.to_dict()}
        if session:
            smoothed = service.smoothed(session, alpha, row)
            item["smoothed"] = {"label": smoothed.label, "confidence": round(smoothed.confidence, 6)}
            if smoothed.labels is not None:  # a multi-label run: the smoothed label set
                item["smoothed"]["labels"] = list(smoothed.labels)
            if smoothed.reason:
                item["smoothed"]["reason"] = smoothed.reason
        out.append(item)
    return {"predictions": out, "model": service.model_info()}


class FastPredict:
    """ASGI: ``POST /v1/predict`` answered straight from the request, every other request passed to ``app``.

    The hot route skips FastAPI's middleware stack, routing and request objects (measured under ``wrk``: the event
    loop, not the model, limits a one-process server, and that stack was the largest share of its time; see
    BENCHMARKS.md "Serving vs the competent server"). It sits inside the limits and CORS middleware (API key, body
    limit, deadline, metrics, security headers) and answers exactly what the FastAPI route answers: the same
    :func:`read_uploads` rules and :func:`predict_answer`, errors as the same JSON.
    """

    def __init__(self, app, service):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/predict" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nothing to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers = {}
        for key, value in scope["headers"]:
            if key in (b"content-type", b"x-filename"):
                headers.setdefault(key, value.decode("latin-1"))  # the first, as Starlette's headers.get
        try:
            uploads = uploads_of(
                b"".join(chunks), headers.get(b"content-type", ""), headers.get(b"x-filename"),
                self.service.settings.max_files,
            )  # fmt: skip
            query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
            response = json_response(await predict_answer(self.service, query, uploads))
        except HTTPError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.headers)
        except Exception as exc:  # noqa: BLE001 - as the app's handler: 500 JSON, the server keeps running
            # logged, as uvicorn logs an exception of the FastAPI route
            log.exception("unexpected error answering POST /v1/predict")
            response = internal_error_response(exc)
        await response(scope, receive, send)


def register(api, service) -> None:
    @api.post("/v1/predict")
    async def predict(request: Request):
        """Classify the uploaded image(s). Query: ``top_k``, ``session`` + ``smooth`` (camera mode).

        A server made by ``create_app`` answers this path with :class:`FastPredict` (same answers); this route
        serves the inner FastAPI app (``app.fastapi``) mounted elsewhere, and documents the API."""
        uploads = await read_uploads(request, service.settings.max_files)
        return json_response(await predict_answer(service, request.query_params, uploads))

    @api.post("/v1/admin/reload")
    async def reload(request: Request):
        """Swap to another version of ``--models DIR`` without downtime; body ``{"version": NAME}`` or none."""
        if not service.settings.api_key:  # the middleware answers 401 to a wrong or missing key
            raise HTTPError(
                403,
                "forbidden",
                "admin routes are off on a server without an API key; start it with --api-key",
            )
        version = await _reload_version(request)
        answer = await service.reload(version)
        # every worker process (and a later restart) follows the wanted-version file (server/watch.py)
        answer["published"] = await asyncio.to_thread(watch.publish, service.models, version)
        return json_response(answer)

    @api.get("/v1/model")
    async def model():
        """Labels, input shape, preprocessing and the run's metrics summary."""
        clf = service.clf
        run = clf.run_dir
        metrics = read_json(run.metrics) if run.metrics.exists() else {}
        # a multi-label run answers each class at its own threshold (RUN/thresholds.json)
        multilabel_info = (
            {"thresholds": dict(zip(clf.labels, map(float, clf.thresholds), strict=True))}
            if clf.task == "multilabel"
            else {}
        )
        summary = {
            split: {k: v for k, v in values.items() if isinstance(v, (int, float))}
            for split, values in metrics.items()
            if isinstance(values, dict)
        }
        return json_response(
            {
                **service.model_info(),
                "labels": clf.labels,
                "num_classes": len(clf.labels),
                "input_shape": list(service.input_shape),
                "input": "any JPEG, PNG, BMP, GIF, WebP or TIFF image (resized by the server)",
                "resize": clf.resize,
                "runtime": clf.runtime,
                "task": clf.task,
                "temperature": clf.temperature,
                "threshold": service.threshold,
                **multilabel_info,
                "metrics": summary,
                **({"last_reload_error": service.reload_error} if service.models is not None else {}),
                **({"record": recording.info(service.recorder)} if service.recorder is not None else {}),
                "limits": {
                    "max_upload_mb": service.settings.max_upload_mb,
                    "max_files": service.settings.max_files,
                    "max_batch": service.settings.max_batch,
                },
            }
        )
