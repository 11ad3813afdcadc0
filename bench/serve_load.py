"""Load test: a naive FastAPI app (decode + ``model.predict`` per request) vs ``imagerec serve``, side by side.

Both servers run on 127.0.0.1 with the same Fashion-MNIST run, one after the other in the same invocation (so the
machine's other load affects both alike), each driven by the same closed-loop load: C concurrent keep-alive clients
posting real PNG files as multipart uploads for S seconds. The load generator is a small raw-asyncio HTTP/1.1
client (prebuilt requests, like wrk) so that the client's own CPU cost stays small on a 2-core machine.

    python bench/serve_load.py --run /tmp/srv-fm-run --data /tmp/srv-fm/test --seconds 20 --concurrency 32

It prints one JSON line per server and a Markdown table; ``--profile`` adds in-process timings of each stage.
"""

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOUNDARY = "imagerecbenchboundary"


# --- the naive baseline ------------------------------------------------------------------------------------------
def naive_app(run: str):
    """What a first FastAPI endpoint usually looks like: decode the upload, ``model.predict`` per request."""
    import numpy as np
    from fastapi import FastAPI, UploadFile

    from imagerec.data.images import load_image
    from imagerec.run import RunDir

    run_dir = RunDir(run)
    model = run_dir.load_model()
    config = run_dir.read_config()
    labels = run_dir.read_labels()
    size, channels = int(config["image_size"]), int(config["channels"])
    app = FastAPI()

    @app.post("/predict")
    async def predict(file: UploadFile):
        image = load_image(await file.read(), (size, size), channels)
        probs = model.predict(image[None].astype(np.float32), verbose=0)[0]
        best = int(probs.argmax())
        return {"label": labels[best], "confidence": float(probs[best])}

    return app


def serve_naive(run: str, port: int) -> None:
    import uvicorn

    uvicorn.run(naive_app(run), host="127.0.0.1", port=port, log_level="warning")


# --- load generator ----------------------------------------------------------------------------------------------
def build_request(path: str, data: bytes, port: int, extra_headers: str = "") -> bytes:
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n{extra_headers}\r\n"
    )
    return head.encode() + body


async def _client(port: int, requests: list[bytes], stop_at: float, out: list, rng: random.Random) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            writer.write(rng.choice(requests))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            out.append((time.perf_counter() - start, status))
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        out.append((0.0, f"conn:{type(exc).__name__}"))
    finally:
        writer.close()


async def _drive_raw(
    port: int, requests: list[bytes], seconds: float, concurrency: int, warmup: float
) -> list:
    rng = random.Random(os.getpid())
    await asyncio.gather(
        *(_client(port, requests, time.perf_counter() + warmup, [], rng) for _ in range(concurrency))
    )
    out: list = []
    start = time.perf_counter()
    await asyncio.gather(*(_client(port, requests, start + seconds, out, rng) for _ in range(concurrency)))
    return out


def _drive_proc(job: tuple) -> list:
    return asyncio.run(_drive_raw(*job))


async def drive(
    port: int, requests: list[bytes], seconds: float, concurrency: int, warmup: float = 2.0, procs: int = 1
) -> dict:
    """Closed-loop load; ``procs`` > 1 splits the clients over processes (so the client is not the bottleneck)."""
    if procs > 1:
        import concurrent.futures

        jobs = [(port, requests, seconds, concurrency // procs, warmup)] * procs
        with concurrent.futures.ProcessPoolExecutor(procs) as pool:
            out = [x for part in pool.map(_drive_proc, jobs) for x in part]
    else:
        out = await _drive_raw(port, requests, seconds, concurrency, warmup)
    elapsed = seconds
    lat = sorted(t for t, s in out if s == 200)
    errors = [s for t, s in out if s != 200]

    def pct(q: float) -> float:
        return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else float("nan")

    return {
        "requests": len(out),
        "ok": len(lat),
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "errors": len(errors),
        "5xx": sum(1 for s in errors if isinstance(s, int) and s >= 500),
        "error_kinds": sorted({str(s) for s in errors})[:5],
    }


# --- orchestration -----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port: int, path: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status in (200, 405):
                    return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    raise RuntimeError("server did not become ready")


def start_server(
    kind: str, run: str, port: int, workers: int, runtime: str = "keras", extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    paths = [str(ROOT / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(paths))
    if kind == "naive":
        cmd = [sys.executable, __file__, "--naive-server", str(port), "--run", run]
    else:
        script = Path(sys.executable).with_name("imagerec")
        imagerec = [str(script)] if script.exists() else [sys.executable, "-m", "imagerec"]
        cmd = [*imagerec, "serve", run, "--port", str(port), "--workers", str(workers), "--runtime", runtime]
        cmd += list(extra)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of ``pid`` and its child processes, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):  # children are listed by the thread that started them
        try:
            pids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    for p in pids:
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                name = (task / "comm").read_text().strip()
            except OSError:
                continue
            key = "main" if task.name == str(pid) else ("child" if p != pid else name)
            out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def measure(kind: str, args, requests_for, runtime: str = "keras") -> dict:
    port = free_port()
    proc = start_server(kind, args.run, port, args.workers, runtime, tuple(args.serve_args.split()))
    try:
        wait_ready(port, "/readyz" if kind == "imagerec" else "/docs", proc)
        path = "/v1/predict" if kind == "imagerec" else "/predict"
        before, client_before = cpu_seconds(proc.pid), time.process_time()
        result = asyncio.run(
            drive(port, requests_for(path, port), args.seconds, args.concurrency, procs=args.client_procs)
        )
        after, client_cpu = cpu_seconds(proc.pid), time.process_time() - client_before
        # CPU per request, by where it was spent: the server's event-loop thread (HTTP, routing, JSON), its other
        # threads (model, decode threads, TensorFlow's pools), its child processes (decoders, uvicorn workers),
        # and this load generator (warm-up included, so slightly pessimistic)
        used = {key: after[key] - before.get(key, 0.0) for key in after}
        n = max(result["requests"], 1)
        main = used.pop("main", 0.0)
        child = used.pop("child", 0.0)
        result["cpu_ms_per_request"] = {
            "server_event_loop": round(1e3 * main / n, 3),
            "server_other_threads": round(1e3 * sum(used.values()) / n, 3),
            "server_child_processes": round(1e3 * child / n, 3),
            "load_generator": round(1e3 * client_cpu / n, 3),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    label = (
        "naive FastAPI + model.predict"
        if kind == "naive"
        else f"imagerec serve --runtime {runtime} --workers {args.workers} {args.serve_args}".strip()
    )
    return {"server": label, **result}


def profile(run: str, files: list[bytes]) -> dict:
    """In-process cost of each stage of one request (median of repeats)."""
    import numpy as np

    from imagerec.classifier import Classifier
    from imagerec.server.uploads import parse_multipart

    clf = Classifier.load(run, runtime="keras")  # "auto" may pick an export, which has no Keras model
    body = build_request("/", files[0], 0).split(b"\r\n\r\n", 1)[1]
    ctype = f"multipart/form-data; boundary={BOUNDARY}"

    def timeit(fn, repeat: int = 300) -> float:
        fn()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    batch1 = np.stack([clf.preprocess(files[0])])
    batch32 = np.repeat(batch1, 32, axis=0)
    return {
        "multipart_parse_ms": round(timeit(lambda: parse_multipart(body, ctype, 16)), 4),
        "decode_png_ms": round(timeit(lambda: clf.preprocess(files[0])), 4),
        "model_batch1_ms": round(timeit(lambda: clf.predict_proba(batch1)), 3),
        "model_batch32_ms": round(timeit(lambda: clf.predict_proba(batch32), 100), 3),
        "keras_model_predict_batch1_ms": round(
            timeit(lambda: clf.model.predict(batch1.astype(np.float32), verbose=0), 30), 2
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="/tmp/srv-fm-run")
    parser.add_argument("--data", default="/tmp/srv-fm/test", help="folder of PNG files to upload")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", choices=["naive", "imagerec"], default=None)
    parser.add_argument(
        "--runtimes", default="keras", help="comma-separated runtimes for imagerec serve (keras,tflite)"
    )
    parser.add_argument(
        "--serve-args", default="", help="extra 'imagerec serve' options, e.g. '--decode-workers 0'"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--client-procs", type=int, default=1, help="load-generator processes (a many-core host)"
    )
    parser.add_argument("--naive-server", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        serve_naive(args.run, args.naive_server)
        return
    paths = sorted(Path(args.data).rglob("*.png"))[
        :: max(1, len(sorted(Path(args.data).rglob("*.png"))) // 256)
    ][:256]
    if not paths:
        raise SystemExit(
            f"no PNG files under {args.data}; run 'imagerec data builtin fashion-mnist /tmp/srv-fm' first"
        )
    files = [p.read_bytes() for p in paths]

    def requests_for(path: str, port: int) -> list[bytes]:
        return [build_request(path, data, port) for data in files]

    results = []
    if args.only in (None, "naive"):
        results.append(measure("naive", args, requests_for))
        print(json.dumps(results[-1]), flush=True)
    if args.only in (None, "imagerec"):
        for runtime in args.runtimes.split(","):
            results.append(measure("imagerec", args, requests_for, runtime))
            print(json.dumps(results[-1]), flush=True)
    if args.only is None and results[0]["rps"]:
        for r in results[1:]:
            print(f"throughput ratio {r['server']} / naive: {r['rps'] / results[0]['rps']:.1f}x")
    print("\n| server | req/s | p50 ms | p95 ms | p99 ms | errors | 5xx |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['server']} | {r['rps']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['errors']} | {r['5xx']} |"
        )
    if args.profile:
        print(json.dumps(profile(args.run, files)))


if __name__ == "__main__":
    main()
