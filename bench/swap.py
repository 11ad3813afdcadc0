"""Swap without downtime under load: ``imagerec serve --models DIR`` reloading versions while 32 clients post images.

The bar (issue 21): reloading a new version under the 32-client load gives zero 5xx and zero dropped connections,
and the p99 latency during the swap is at most 3x the steady p99.

One server (``imagerec serve --models DIR --api-key K --watch-s 1``, a subprocess) is driven by ``wrk -c 32 -t 2
-d S --latency`` posting one 28x28 Fashion-MNIST PNG as the raw body to ``/v1/predict`` (a Lua ``response`` hook
counts non-2xx answers; wrk counts socket errors: connect, read, write, timeout). Three kinds of round alternate,
R rounds each, on the same server:

* ``steady``: no swap;
* ``admin``: ``POST /v1/admin/reload`` back and forth between v1 and v2 every ~2 s (a rollback is a reload too);
* ``watch``: a new version directory appears in DIR (renamed in, complete) every ~4 s and the watcher swaps it in.

The versions are copies of one run (``--run``; a swap is a swap: the new model is loaded, checked and warmed
whatever its weights). A light sequential probe (one keep-alive connection, one request every 20 ms) records each
request's latency with a timestamp, so the p99 of a window around each swap (from 0.5 s before the swap starts
to 0.5 s after the new version answers) can be compared with the probe's p99 in the steady rounds: wrk reports
totals only.

    python bench/swap.py --run /tmp/shared-runs/fmnist --seconds 15 --rounds 3

Needs wrk (Debian/Ubuntu: ``apt-get install wrk``). Prints one JSON line per round and a Markdown summary.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

KEY = "swap-bench-key"
FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"
wrk.headers["X-API-Key"] = "%(key)s"
local f = io.open("%(png)s", "rb"); wrk.body = f:read("*a"); f:close()
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0; s5 = 0 end
function response(status, headers, body)
  if status < 200 or status > 299 then bad = bad + 1 end
  if status >= 500 then s5 = s5 + 1 end
end
function done(summary, latency, requests)
  local b, f = 0, 0
  for _, t in ipairs(threads) do b = b + t:get("bad"); f = f + t:get("s5") end
  local e = summary.errors
  io.write(string.format('SWAPBENCH {"requests": %%d, "non2xx": %%d, "s5xx": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "timeout": %%d, "p50_ms": %%.3f, "p99_ms": %%.3f, "max_ms": %%.3f, "seconds": %%.3f}\\n',
    summary.requests, b, f, e.connect, e.read, e.write, e.timeout, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, summary.duration / 1e6))
end
"""


def fmnist_png(path: Path) -> None:
    """The first Fashion-MNIST test image as a PNG (the shipped IDX file; no download)."""
    from PIL import Image

    with gzip.open(FMNIST, "rb") as fh:
        data = fh.read(16 + 28 * 28)
    image = np.frombuffer(data[16:], np.uint8).reshape(28, 28)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def add_version(run: Path, dest: Path) -> None:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("backup", "logs"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Probe(threading.Thread):
    """One request every ``gap_s`` on one keep-alive connection: ``(start, seconds, status, version)`` rows."""

    def __init__(self, port: int, png: bytes, gap_s: float = 0.02):
        super().__init__(daemon=True)
        self.port, self.png, self.gap_s = port, png, gap_s
        self.rows: list[tuple[float, float, int, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "image/png", "X-API-Key": KEY}
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                conn.request("POST", "/v1/predict", self.png, headers)
                response = conn.getresponse()
                body = response.read()
                status = response.status
                version = json.loads(body)["model"].get("model_version", "") if status == 200 else ""
            except (OSError, http.client.HTTPException):
                status, version = 0, ""
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.rows.append((start, time.monotonic() - start, status, version))
            time.sleep(self.gap_s)


def post(port: int, path: str, body: dict | None = None, method: str = "POST") -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request(method, path, json.dumps(body) if body else None, {"X-API-Key": KEY})
    response = conn.getresponse()
    answer = json.loads(response.read() or b"{}")
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status} {answer}")
    return answer


def served(port: int) -> str:
    return post(port, "/v1/model", method="GET")["model_version"]


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) * 1000 if values else float("nan")


def one_round(kind: str, args, port: int, lua: Path, models: Path, staged: list[Path]) -> dict:
    probe = Probe(port, args.png_bytes)
    cmd = ["wrk", "-c", "32", "-t", "2", "-d", f"{args.seconds}s", "--latency", "-s", str(lua),
           f"http://127.0.0.1:{port}/v1/predict"]  # fmt: skip
    probe.start()
    wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    began = time.monotonic()
    swaps: list[tuple[float, float, str]] = []  # (start, the new version answers, version)
    time.sleep(2.0)
    while time.monotonic() - began < args.seconds - 4:
        start = time.monotonic()
        if kind == "admin":
            target = "v1" if served(port) != "v1" else "v2"
            post(port, "/v1/admin/reload", {"version": target})
            swaps.append((start, time.monotonic(), target))
            time.sleep(2.0)
        elif kind == "watch" and staged:
            new = staged.pop(0)
            new.rename(models / new.name)  # appears complete, as `mv` from the same disk does
            while served(port) != new.name and time.monotonic() - start < 30:
                time.sleep(0.05)
            swaps.append((start, time.monotonic(), new.name))
            time.sleep(2.0)
        else:
            time.sleep(0.2)
    out, _ = wrk.communicate(timeout=args.seconds + 60)
    probe.stop.set()
    probe.join(30)
    line = next((ln for ln in out.splitlines() if ln.startswith("SWAPBENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    result = {"kind": kind, **json.loads(line[len("SWAPBENCH ") :])}
    rows = probe.rows
    window = [r[1] for r in rows if any(s - 0.5 <= r[0] <= e + 0.5 for s, e, _ in swaps)]
    result |= {
        "swaps": len(swaps),
        "swap_s": [round(e - s, 2) for s, e, _ in swaps],
        "probe_requests": len(rows),
        "probe_failed": sum(1 for r in rows if r[2] != 200),
        "probe_p99_ms": round(p99([r[1] for r in rows]), 2),
        "window_p99_ms": round(p99(window), 2) if swaps else None,
        "window_requests": len(window),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run", required=True, help="a Fashion-MNIST run directory (copied in as each version)"
    )
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--kinds", default="steady,admin,watch", help="the kinds of round, comma-separated")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: install it (Debian/Ubuntu: apt-get install wrk)")
    work = Path(args.work or tempfile.mkdtemp(prefix="imagerec-swap-"))
    models, staging = work / "models", work / "staging"
    shutil.rmtree(work, ignore_errors=True)
    models.mkdir(parents=True)
    staging.mkdir()
    run = Path(args.run)
    for name in ("v1", "v2"):
        add_version(run, models / name)
    png = work / "fmnist.png"
    fmnist_png(png)
    args.png_bytes = png.read_bytes()
    lua = work / "post.lua"
    lua.write_text(LUA % {"key": KEY, "png": png})
    swaps_per_round = max(1, (args.seconds - 4) // 4 + 1)
    staged = []
    for i in range(args.rounds * swaps_per_round):  # the versions the watch rounds will see appear
        staged.append(staging / f"v{10 + i}")
        add_version(run, staged[-1])

    port = free_port()
    log = open(work / "serve.log", "wb")  # noqa: SIM115 - open for the server's whole life
    cmd = [sys.executable, "-m", "imagerec", "serve", "--models", str(models), "--api-key", KEY, "--port",
           str(port), "--watch-s", "1", "--log-level", "warning"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if post(port, "/readyz", method="GET")["status"] == "ready":
                    break
            except (OSError, RuntimeError, ValueError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"server did not start:\n{(work / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        runtime = post(port, "/v1/model", method="GET")["runtime"]
        results = []
        for _ in range(args.rounds):
            for kind in args.kinds.split(","):
                results.append(one_round(kind, args, port, lua, models, staged))
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(60)
        log.close()
    summarize(results, runtime, args)


def summarize(results: list[dict], runtime: str, args) -> None:
    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results if r["kind"] == kind)

    steady_wrk, steady_probe = med("steady", "p99_ms"), med("steady", "probe_p99_ms")
    print(f"\nruntime {runtime}, {args.rounds} rounds of {args.seconds} s per kind (medians)\n")
    print(
        "| rounds | swaps | requests | non-2xx | 5xx | socket errors | wrk p50 ms | wrk p99 ms | p99 / steady "
        "| probe p99 ms | swap-window p99 ms | window / steady probe p99 | swap s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        rows = [r for r in results if r["kind"] == kind]
        errors = sum(r["connect"] + r["read"] + r["write"] + r["timeout"] for r in rows)
        windows = [r["window_p99_ms"] for r in rows if r["window_p99_ms"] is not None]
        window = statistics.median(windows) if windows else None
        swap_s = [s for r in rows for s in r["swap_s"]]
        print(
            f"| {kind} | {sum(r['swaps'] for r in rows)} | {med(kind, 'requests'):.0f} "
            f"| {sum(r['non2xx'] for r in rows)} | {sum(r['s5xx'] for r in rows)} | {errors} "
            f"| {med(kind, 'p50_ms'):.1f} | {med(kind, 'p99_ms'):.1f} | {med(kind, 'p99_ms') / steady_wrk:.2f}x "
            f"| {med(kind, 'probe_p99_ms'):.1f} | {window if window is None else f'{window:.1f}'} "
            f"| {'-' if window is None else f'{window / steady_probe:.2f}x'} "
            f"| {statistics.median(swap_s) if swap_s else '-'} |"
        )


if __name__ == "__main__":
    main()
