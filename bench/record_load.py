"""Load test: ``imagerec serve RUN`` with recording off vs ``--record DIR --record-images review``, side by side.

Two servers (subprocesses, the same Fashion-MNIST run, default settings) are started once; rounds alternate
between them (off, on, off, on, ...), each driven by ``wrk -c 32 -t 2 -d S --latency`` posting one 28x28 PNG (the
first Fashion-MNIST test image, from the shipped IDX file) as the raw body of ``POST /v1/predict``. The idle server
waits while the other is measured. Reported: the median over rounds of requests/s and of wrk's p99 latency, and
the ratios on/off (the bar: throughput >= 0.90x, p99 within +2 ms). After the rounds, the records written are
counted against the 200s the recording server answered.

    python bench/record_load.py --run /tmp/shared-runs/fmnist --rounds 3 --seconds 15

Needs wrk (Debian/Ubuntu: ``apt-get install wrk``). Prints one JSON line per round and a Markdown row.
"""

import argparse
import gzip
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
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"
local f = io.open("%(png)s", "rb"); wrk.body = f:read("*a"); f:close()
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body) if status ~= 200 then bad = bad + 1 end end
function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format('RECBENCH {"requests": %%d, "non200": %%d, "errors": %%d, "p50_ms": %%.3f, ' ..
    '"p99_ms": %%.3f, "seconds": %%.3f}\\n', summary.requests, b, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.duration / 1e6))
end
"""


def fmnist_png(path: Path) -> None:
    from PIL import Image

    with gzip.open(FMNIST, "rb") as fh:
        data = fh.read(16 + 28 * 28)
    buf = io.BytesIO()
    Image.fromarray(np.frombuffer(data[16:], np.uint8).reshape(28, 28)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    run: str, port: int, log: Path, record: Path | None, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "imagerec", "serve", run, "--port", str(port), *extra]
    if record is not None:
        cmd += ["--record", str(record), "--record-images", "review"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                if answer.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not get ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def wrk_round(port: int, lua: Path, seconds: int) -> dict:
    cmd = ["wrk", "-c", "32", "-t", "2", "-d", f"{seconds}s", "--latency", "-s", str(lua),
           f"http://127.0.0.1:{port}/v1/predict"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("RECBENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    result = json.loads(line[len("RECBENCH ") :])
    result["rps"] = round(result["requests"] / result["seconds"], 1)
    return result


def count_records(record: Path) -> tuple[int, int]:
    sys.path.insert(0, str(ROOT / "src"))
    from imagerec.monitoring.records import read_records

    records = read_records(record)
    return len(records.rows), records.torn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a Fashion-MNIST run directory")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setting (alternating)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: install it (Debian/Ubuntu: apt-get install wrk)")
    work = Path(args.work or tempfile.mkdtemp(prefix="imagerec-recbench-"))
    png, lua, record = work / "item.png", work / "post.lua", work / "recorded"
    fmnist_png(png)
    lua.write_text(LUA % {"png": png})
    ports = {"off": free_port(), "on": free_port()}
    procs = {}
    try:
        procs["off"] = start_server(args.run, ports["off"], work / "off.log", None)
        procs["on"] = start_server(args.run, ports["on"], work / "on.log", record)
        # one short warm-up round each (first-request paths, caches); the recording one's answers are recorded too
        warm = {kind: wrk_round(port, lua, 3) for kind, port in ports.items()}
        rows: dict[str, list[dict]] = {"off": [], "on": []}
        for index in range(args.rounds):
            for kind in ("off", "on") if index % 2 == 0 else ("on", "off"):
                result = {"round": index + 1, "recording": kind, **wrk_round(ports[kind], lua, args.seconds)}
                rows[kind].append(result)
                print(json.dumps(result), flush=True)
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGINT)  # a clean stop: the recorder writes what is queued
        for proc in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("rps", "p99_ms", "p50_ms")}
        for k, v in rows.items()
    }
    answered = sum(r["requests"] - r["non200"] for r in [*rows["on"], warm["on"]])
    written, torn = count_records(record)
    summary = {
        "off": med["off"], "on": med["on"],
        "rps_ratio": round(med["on"]["rps"] / med["off"]["rps"], 3),
        "p99_delta_ms": round(med["on"]["p99_ms"] - med["off"]["p99_ms"], 2),
        "records": written, "answered_with_recording": answered, "torn": torn,
        "pictures": sum(1 for p in (record / "images").rglob("*") if p.is_file()),
        "load": os.getloadavg(),
    }  # fmt: skip
    print(json.dumps(summary), flush=True)
    print("\n| rounds x s | off req/s | on req/s | ratio | off p99 ms | on p99 ms | delta p99 ms | records |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.rounds} x {args.seconds} | {med['off']['rps']:.0f} | {med['on']['rps']:.0f} | "
        f"{summary['rps_ratio']:.3f} | {med['off']['p99_ms']:.1f} | {med['on']['p99_ms']:.1f} | "
        f"{summary['p99_delta_ms']:+.1f} | {written} (torn {torn}) |"
    )


if __name__ == "__main__":
    main()
