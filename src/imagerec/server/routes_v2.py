"""Open Inference Protocol (KServe v2) REST: health, model metadata, readiness and ``infer``.

``POST /v2/models/{name}/infer`` takes ONE input tensor:

* ``BYTES`` of shape ``[N]`` (or ``[N, 1]``): encoded images (JPEG, PNG, ...), each a JSON string holding the
  base64 of the file (or the raw bytes as a latin-1 string), or binary data through the ``binary_tensor_data``
  extension (``Inference-Header-Content-Length``, 4-byte little-endian length before each element), as
  ``tritonclient.http`` sends by default;
* ``FP32`` (or ``UINT8``) of shape ``[N, S, S, C]`` with pixel values in 0..255 (the model's input size).

It answers the outputs ``probabilities`` (FP32 ``[N, K]``, always first), ``labels`` (BYTES ``[N]``, top-1 class or
``unknown``) and, for a run with an embedding reference, ``ood_score`` (FP32 ``[N]``, higher = further from the
training data) as JSON. For a multi-label run each element of ``labels`` is the image's label *set*: the classes at
or above their own thresholds joined by ``;``, most probable first (``""`` when none); the model metadata says so in
``parameters`` (``task`` ``multilabel``, ``labels_output`` and the per-class ``thresholds``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import struct
from typing import Any

import numpy as np
from starlette.requests import Request  # module level: FastAPI resolves the annotation by name

from imagerec.data.images import sniff_format
from imagerec.prediction import split_scores
from imagerec.server.limits import HTTPError
from imagerec.server.responses import json_response

#: what the ``labels`` output holds for a multi-label run (the metadata's ``parameters.labels_output``)
LABEL_SETS = (
    "label sets: the classes at or above their thresholds joined by ';', most probable first, '' = none"
)
_DTYPES = {"FP32": np.float32, "FP64": np.float64, "UINT8": np.uint8, "FP16": np.float16}


def label_of(pred) -> str:
    """The ``labels`` output element of one answer: its top-1 label, or a multi-label answer's ``;``-joined set."""
    return pred.label if pred.labels is None else ";".join(pred.labels)


def _bad(message: str) -> HTTPError:
    return HTTPError(400, "bad_request", message)


def _split_binary(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise _bad(f"Inference-Header-Content-Length {header_length[:20]!r} is not an integer") from None
        if not 0 <= size <= len(body):
            raise _bad(f"Inference-Header-Content-Length {size} is outside the body of {len(body)} bytes")
        json_part, binary = body[:size], body[size:]
    try:
        request = json.loads(json_part)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"body is not valid JSON ({exc}); expected an Open Inference Protocol request") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise _bad("expected a JSON object with a non-empty 'inputs' list")
    return request, binary


def _decode_bytes_elements(raw: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise _bad("binary BYTES tensor ends inside a 4-byte length prefix")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise _bad("binary BYTES element runs past the end of its data")
        out.append(raw[pos : pos + n])
        pos += n
    return out


def _string_to_bytes(item: Any, base64_only: bool) -> bytes:
    if not isinstance(item, str):
        raise _bad(f"BYTES data must be strings (base64 of an image file), got {type(item).__name__}")
    try:
        decoded = base64.b64decode(item, validate=True)
        if base64_only or sniff_format(decoded[:16]):
            return decoded
    except (binascii.Error, ValueError):
        if base64_only:
            raise _bad("BYTES element is not valid base64") from None
    try:
        return item.encode("latin-1")
    except UnicodeEncodeError:
        return item.encode("utf-8")


def _flatten(data: Any) -> list:
    if isinstance(data, list) and data and isinstance(data[0], list):
        return [x for sub in data for x in _flatten(sub)]
    return data if isinstance(data, list) else [data]


def _input_tensor(spec: Any, binary: bytes, offset: int, limit: int) -> tuple[str, Any, int]:
    """(kind, payload, new_offset) for one input; kind is ``bytes`` (list of files) or ``pixels`` (array)."""
    if not isinstance(spec, dict):
        raise _bad("each input must be a JSON object with name, shape, datatype and data")
    datatype = spec.get("datatype")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape) or not shape:
        raise _bad(
            f"input {spec.get('name')!r}: shape must be a list of non-negative integers, got {shape!r}"
        )
    count = math.prod(shape)
    params = spec.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    raw = None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise _bad(
                f"input {spec.get('name')!r}: binary_data_size {size!r} does not fit the binary section"
            )
        raw, offset = binary[offset : offset + size], offset + size
    elif "data" not in spec:
        raise _bad(f"input {spec.get('name')!r} has no 'data'")
    if datatype == "BYTES":
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise _bad(f"BYTES input shape must be [N] or [N, 1], got {shape}")
        if raw is not None:
            items = _decode_bytes_elements(raw)
        else:
            base64_only = isinstance(params, dict) and params.get("content_type") == "base64"
            items = [_string_to_bytes(x, base64_only) for x in _flatten(spec["data"])]
        if len(items) != count:
            raise _bad(f"BYTES input declares shape {shape} ({count} elements) but holds {len(items)}")
        if not 1 <= count <= limit:
            raise _bad(f"BYTES input holds {count} images; expected 1..{limit}")
        return "bytes", items, offset
    if datatype in _DTYPES:
        if len(shape) != 4:
            raise _bad(f"{datatype} input must have shape [N, S, S, C], got {shape}")
        try:
            if raw is not None:
                arr = np.frombuffer(raw, dtype=np.dtype(_DTYPES[datatype]).newbyteorder("<"))
            else:
                arr = np.asarray(_flatten(spec["data"]), dtype=np.float64)
        except (TypeError, ValueError):
            raise _bad(f"{datatype} input data must be numbers") from None
        if arr.size != count:
            raise _bad(f"{datatype} input declares shape {shape} ({count} values) but holds {arr.size}")
        arr = arr.astype(np.float32).reshape(shape)
        if not np.isfinite(arr).all() or arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise _bad(f"{datatype} pixel values must be finite and in 0..255")
        if not 1 <= shape[0] <= limit:
            raise _bad(f"{datatype} input holds {shape[0]} images; expected 1..{limit}")
        return "pixels", arr, offset
    raise _bad(
        f"input datatype {datatype!r} is not supported; use BYTES (encoded images) or FP32 [N, S, S, C]"
    )


def register(api, service) -> None:
    # service.clf is read per call, never kept: POST /v1/admin/reload may swap it (server/versions.py)
    size, _, channels = service.input_shape
    limit = max(service.settings.max_files, service.settings.max_batch)

    def check_model(name: str) -> None:
        clf = service.clf
        if name != clf.name:
            raise HTTPError(
                404, "model_not_found", f"no model named {name[:80]!r}; this server serves {clf.name!r} only"
            )

    def metadata() -> dict[str, Any]:
        clf = service.clf
        return {
            "name": clf.name,
            "versions": [clf.version],
            "platform": f"imagerec_{clf.runtime}",
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [-1]},
                {"name": "pixels", "datatype": "FP32", "shape": [-1, size, size, channels]},
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(clf.labels)]},
                {"name": "labels", "datatype": "BYTES", "shape": [-1]},
                *(
                    [{"name": "ood_score", "datatype": "FP32", "shape": [-1]}]
                    if clf.reference is not None
                    else []
                ),
            ],
            "parameters": {"labels": clf.labels, "task": clf.task, **multilabel_parameters()},
        }

    def multilabel_parameters() -> dict[str, Any]:
        clf = service.clf
        if clf.task != "multilabel":
            return {}
        thresholds = dict(zip(clf.labels, map(float, clf.thresholds), strict=True))
        return {"labels_output": LABEL_SETS, "thresholds": thresholds}

    @api.get("/v2")
    async def server_metadata():
        from imagerec.version import __version__

        return json_response(
            {"name": "imagerec", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    @api.get("/v2/health/live")
    async def live():
        return json_response({"live": True})

    @api.get("/v2/health/ready")
    async def ready():
        if not service.serving:
            return json_response({"ready": False}, status=503)
        return json_response({"ready": True})

    @api.get("/v2/models/{name}")
    @api.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        check_model(name)
        return json_response(metadata())

    @api.get("/v2/models/{name}/ready")
    @api.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        clf = service.clf
        check_model(name)
        return json_response(
            {"name": clf.name, "ready": service.serving}, status=200 if service.serving else 503
        )

    @api.post("/v2/models/{name}/infer")
    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        clf = service.clf
        check_model(name)
        body = await request.body()
        payload, binary = _split_binary(body, request.headers.get("inference-header-content-length"))
        if len(payload["inputs"]) != 1:
            raise _bad(
                f"expected exactly one input tensor (BYTES images or FP32 pixels), got {len(payload['inputs'])}"
            )
        kind, data, _ = _input_tensor(payload["inputs"][0], binary, 0, limit)
        if kind == "bytes":
            images = list(
                await asyncio.gather(*(service.decode(item, f"image {i}") for i, item in enumerate(data)))
            )
        else:
            if tuple(data.shape[1:]) != service.input_shape:
                raise _bad(
                    f"pixels shape {list(data.shape)} does not match the model input [N, {size}, {size}, {channels}]"
                )
            images = list(data)
        scores = await service.infer(images, [f"image {i}" for i in range(len(images))])
        # recorded (--record) with the uploaded files, or the pixels themselves for an FP32 / UINT8 input
        files, pixels = (data, None) if kind == "bytes" else (None, images)
        preds = service.results(scores, 1, [None] * len(images), files, pixels)
        probs, ood = split_scores(scores, len(clf.labels))
        outputs = [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": list(probs.shape),
                "data": probs.ravel().tolist(),
            },
            {
                "name": "labels",
                "datatype": "BYTES",
                "shape": [len(preds)],
                "data": list(map(label_of, preds)),
            },
        ]
        if ood is not None and not np.isnan(ood).any():
            outputs.append(
                {"name": "ood_score", "datatype": "FP32", "shape": [len(ood)], "data": ood.tolist()}
            )
        wanted = payload.get("outputs")
        if isinstance(wanted, list) and wanted:
            names = {o.get("name") for o in wanted if isinstance(o, dict)}
            outputs = [o for o in outputs if o["name"] in names]
        response = {"model_name": clf.name, "model_version": clf.version, "outputs": outputs}
        if isinstance(payload.get("id"), str):
            response["id"] = payload["id"][:256]
        return json_response(response)
