"""The Review tab's API (``imagerec serve RUN --review QUEUE --review-out DATASET``); absent otherwise (404).

* ``GET /v1/review/queue``: the classes a reviewer picks from (the served run's), and the queue's pictures with the
  model's guess and the decision taken so far (so a reloaded page resumes where it was);
* ``GET /v1/review/image/{id}``: one picture of the queue;
* ``POST /v1/review/label`` ``{"id": ID, "label": CLASS | [CLASS, ...] | "none" | "skip" | "undo"}``: write the
  decision into DATASET (:class:`imagerec.monitoring.labels.LabelStore`: atomic, last write wins); a label outside
  the classes is a 400 whose message and ``classes`` list them.

Behind the API key like every ``/v1`` route (``LimitsMiddleware``): the page fetches the pictures with the key
header and shows them as blob URLs.
"""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request  # module level: FastAPI resolves the annotation by name

from imagerec.errors import ImagerecError
from imagerec.monitoring.labels import LabelRefused, LabelStore
from imagerec.monitoring.review import read_queue
from imagerec.server.limits import HTTPError
from imagerec.server.responses import json_response

MEDIA = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
}


def register(api, service) -> None:
    """Add the review routes when the server was started with a queue (``ServeSettings.review``)."""
    settings = service.settings
    if not settings.review:
        return
    if not settings.review_out:
        raise ImagerecError("--review QUEUE needs --review-out DATASET: the folder the labels are written to")
    queue = read_queue(settings.review)
    classes = list(service.clf.labels)
    store = LabelStore(settings.review_out, classes, multilabel=service.clf.task == "multilabel")

    def item_of(item_id: str):
        item = queue.by_id(item_id) if isinstance(item_id, str) else None
        if item is None:
            raise HTTPError(404, "not_found", f"no picture {str(item_id)[:40]!r} in the review queue")
        return item

    @api.get("/v1/review/queue")
    async def review_queue():
        decisions = await asyncio.to_thread(store.decisions)
        keys = ("id", "guess", "labels", "confidence", "top_k", "ood_score", "why")
        items = [{k: it.get(k) for k in keys} | {"decision": decisions.get(it["id"])} for it in queue.items]
        done = sum(1 for it in items if it["decision"] is not None)
        return json_response(
            {"classes": classes, "task": service.clf.task, "size": len(items), "done": done, "items": items}
        )

    @api.get("/v1/review/image/{item_id}")
    async def review_image(item_id: str):
        from starlette.responses import Response

        path = queue.image_path(item_of(item_id))
        data = await asyncio.to_thread(path.read_bytes)
        return Response(data, media_type=MEDIA.get(path.suffix.lower(), "application/octet-stream"))

    @api.post("/v1/review/label")
    async def review_label(request: Request):
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict) or "id" not in body or "label" not in body:
            raise HTTPError(
                400, "bad_request", 'send JSON {"id": ID, "label": CLASS | "none" | "skip" | "undo"}'
            )
        item = item_of(body["id"])
        reviewer = body.get("reviewer") if isinstance(body.get("reviewer"), str) else None
        try:
            entry = await asyncio.to_thread(
                store.decide, item["id"], queue.image_path(item), body["label"], reviewer
            )
        except LabelRefused as exc:
            return json_response(
                {"error": {"code": "bad_label", "message": str(exc)}, "classes": classes}, status=400
            )
        return json_response({"id": item["id"], "label": entry["label"]})


__all__ = ["register"]
