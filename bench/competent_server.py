"""The server a competent engineer would write instead of ``imagerec serve`` (issue 22's baseline).

Not the naive one of bench/serve_load.py (``model.predict`` per request): a FastAPI endpoint that reads the body
and runs decode + model on Starlette's thread pool; Pillow decode; one LiteRT interpreter per thread (XNNPACK, float32, one thread each, as
the LiteRT docs recommend for concurrent callers); no batching; the same JSON answer fields a client needs.

    python bench/competent_server.py RUN --port 8200 [--workers 2]   # needs RUN/exports/tflite/model.tflite

Raw image bytes as the body of ``POST /v1/predict`` (what ``wrk`` sends), or a multipart ``file`` field.
"""

import argparse
import io
import json
import os
import threading
from pathlib import Path

import numpy as np
from starlette.requests import Request  # module level: FastAPI resolves the annotation by name


def make_app(run: Path):
    from ai_edge_litert.interpreter import Interpreter
    from fastapi import FastAPI, HTTPException
    from PIL import Image
    from starlette.concurrency import run_in_threadpool

    config = json.loads((run / "config.json").read_text())
    labels, size, channels = config["class_names"], config["image_size"], config["channels"]
    content = (run / "exports" / "tflite" / "model.tflite").read_bytes()
    local = threading.local()

    def interpreter():
        it = getattr(local, "it", None)
        if it is None:
            it = local.it = Interpreter(model_content=content, num_threads=1)
            it.allocate_tensors()
            local.inp = it.get_input_details()[0]
            local.out = it.get_output_details()[0]["index"]
        return it

    def classify(body: bytes) -> dict:
        try:
            image = Image.open(io.BytesIO(body)).convert("L" if channels == 1 else "RGB").resize((size, size))
        except Exception as exc:  # noqa: BLE001 - any unreadable upload is the client's error
            raise HTTPException(400, f"not an image: {exc}") from None
        it = interpreter()
        x = np.asarray(image, local.inp["dtype"]).reshape(1, size, size, channels)
        it.set_tensor(local.inp["index"], x)
        it.invoke()
        probs = it.get_tensor(local.out)[0]
        top = np.argsort(-probs)[:5]
        return {"label": labels[int(top[0])], "confidence": float(probs[top[0]]),
                "top_k": [[labels[int(i)], float(probs[i])] for i in top]}  # fmt: skip

    app = FastAPI()

    @app.post("/v1/predict")
    async def predict(request: Request):
        body = await request.body()
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            body = await (await request.form())["file"].read()
        return await run_in_threadpool(classify, body)  # decode + model off the event loop

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes (each loads the model)"
    )
    args = parser.parse_args()
    if args.workers > 1:  # uvicorn's multi-process mode imports the app by name: hand it the run through env
        os.environ["COMPETENT_RUN"] = str(args.run)
        uvicorn.run("competent_server:app_from_env", factory=True, workers=args.workers, host="127.0.0.1",
                    port=args.port, log_level="warning", app_dir=str(Path(__file__).parent))  # fmt: skip
        return
    uvicorn.run(make_app(args.run), host="127.0.0.1", port=args.port, log_level="warning")


def app_from_env():
    return make_app(Path(os.environ["COMPETENT_RUN"]))


if __name__ == "__main__":
    main()
