"""Load test with wrk: ``imagerec serve RUN`` vs the competent server (bench/competent_server.py), side by side.

Issue 22's serving bar: ``imagerec serve`` at least 2x the competent server's requests/s, p99 <= 25 ms, no errors,
at 32 keep-alive connections for 15 s, the load generator on the same machine. Both servers are started once and
stay up; rounds alternate between them (competent, imagerec, imagerec, competent, ...), each ``wrk -c 32 -t 2 -d S
--latency`` posting one 28x28 Fashion-MNIST PNG as the raw body of ``POST /v1/predict`` (a Lua hook counts
non-200 answers; wrk counts socket errors). Medians over rounds, and the ratio.

The competent server answers from the run's LiteRT float32 export (``RUN/exports/tflite/model.tflite``; made first with
``imagerec export RUN --format tflite`` when missing); ``imagerec serve`` runs with its defaults (``--runtime auto``).

    python bench/serve_wrk.py --run /tmp/shared-runs/fmnist --rounds 3 --seconds 15

Needs wrk (Debian/Ubuntu: ``apt-get install wrk``). Prints one JSON line per round and a Markdown row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_load import LUA, ROOT, fmnist_png, free_port, start_server, wrk_round  # noqa: E402


def start_competent(run: str, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "bench" / "competent_server.py"), run, "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:  # ready when it answers a request (no readiness route: it has nothing to warm)
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", data=b"x", method="POST")
            urllib.request.urlopen(request, timeout=5)
        except urllib.error.HTTPError:
            return proc  # 400 for b"x": it is up
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"competent server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a Fashion-MNIST run directory")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (alternating)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: install it (Debian/Ubuntu: apt-get install wrk)")
    if not (Path(args.run) / "exports" / "tflite" / "model.tflite").is_file():
        subprocess.run(
            [sys.executable, "-m", "imagerec", "export", args.run, "--format", "tflite"], check=True
        )
    work = Path(args.work or tempfile.mkdtemp(prefix="imagerec-servewrk-"))
    png, lua = work / "item.png", work / "post.lua"
    fmnist_png(png)
    lua.write_text(LUA % {"png": png})
    ports = {"competent": free_port(), "imagerec": free_port()}
    procs = {}
    try:
        procs["competent"] = start_competent(args.run, ports["competent"], work / "competent.log")
        procs["imagerec"] = start_server(args.run, ports["imagerec"], work / "imagerec.log", None)
        for port in ports.values():
            wrk_round(port, lua, 3)  # warm-up: first-request paths, every thread's interpreter
        rows: dict[str, list[dict]] = {"competent": [], "imagerec": []}
        for index in range(args.rounds):
            for kind in ("competent", "imagerec") if index % 2 == 0 else ("imagerec", "competent"):
                result = {"round": index + 1, "server": kind, **wrk_round(ports[kind], lua, args.seconds)}
                rows[kind].append(result)
                print(json.dumps(result), flush=True)
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGINT)
        for proc in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("rps", "p99_ms", "p50_ms")}
        | {"errors": sum(r["errors"] + r["non200"] for r in v)}
        for k, v in rows.items()
    }
    ratio = round(med["imagerec"]["rps"] / med["competent"]["rps"], 2)
    print(json.dumps({**med, "rps_ratio": ratio, "load": os.getloadavg()}), flush=True)
    print("\n| rounds x s | competent req/s | p99 ms | imagerec req/s | p99 ms | ratio | errors (c / i) |")
    print("|---|---|---|---|---|---|---|")
    c, i = med["competent"], med["imagerec"]
    print(
        f"| {args.rounds} x {args.seconds} | {c['rps']:.0f} | {c['p99_ms']:.1f} | {i['rps']:.0f} | "
        f"{i['p99_ms']:.1f} | {ratio:.2f}x | {c['errors']} / {i['errors']} |"
    )


if __name__ == "__main__":
    main()
