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


def start_competent(run: str, port: int, log: Path, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "bench" / "competent_server.py"), run, "--port", str(port), *extra]
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


DEFAULT_SERVERS = ("competent=competent", "imagerec=imagerec")


def parse_server(text: str) -> tuple[str, str, tuple[str, ...]]:
    """``NAME=KIND[:ARGS]``: KIND ``imagerec`` (``imagerec serve RUN ARGS``) or ``competent`` (its script's ARGS)."""
    name, _, spec = text.partition("=")
    kind, _, extra = spec.partition(":")
    if not name or kind not in ("imagerec", "competent"):
        raise SystemExit(f"--server {text!r}: expected NAME=imagerec[:ARGS] or NAME=competent[:ARGS]")
    return name, kind, tuple(extra.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a Fashion-MNIST run directory")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (alternating)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument(
        "--server",
        action="append",
        default=None,
        help="NAME=KIND[:ARGS], repeatable; the first is the baseline of the ratios (default: "
        + " ".join(DEFAULT_SERVERS)
        + "); e.g. --server 'imagerec-w2=imagerec:--workers 2' --server 'competent-w2=competent:--workers 2'",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: install it (Debian/Ubuntu: apt-get install wrk)")
    if not (Path(args.run) / "exports" / "tflite" / "model.tflite").is_file():
        subprocess.run(
            [sys.executable, "-m", "imagerec", "export", args.run, "--format", "tflite"], check=True
        )
    servers = [parse_server(text) for text in (args.server or DEFAULT_SERVERS)]
    work = Path(args.work or tempfile.mkdtemp(prefix="imagerec-servewrk-"))
    work.mkdir(parents=True, exist_ok=True)
    png, lua = work / "item.png", work / "post.lua"
    fmnist_png(png)
    lua.write_text(LUA % {"png": png})
    names = [name for name, _, _ in servers]
    ports = {name: free_port() for name in names}
    procs = {}
    try:
        # one at a time: each is up before the next starts (model loads do not overlap)
        for name, kind, extra in servers:
            log = work / f"{name}.log"
            if kind == "competent":
                procs[name] = start_competent(args.run, ports[name], log, extra)
            else:
                procs[name] = start_server(args.run, ports[name], log, None, extra)
        for port in ports.values():
            wrk_round(port, lua, 3)  # warm-up: first-request paths, every thread's interpreter
        rows: dict[str, list[dict]] = {name: [] for name in names}
        for index in range(args.rounds):
            for name in names if index % 2 == 0 else names[::-1]:  # alternating order, round by round
                result = {"round": index + 1, "server": name, **wrk_round(ports[name], lua, args.seconds)}
                rows[name].append(result)
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
    base = names[0]
    ratios = {name: round(med[name]["rps"] / med[base]["rps"], 2) for name in names}
    print(json.dumps({**med, "rps_ratio_vs_" + base: ratios, "load": os.getloadavg()}), flush=True)
    print(f"\n| server | rounds x s | req/s (median) | p50 ms | p99 ms | x {base} | errors |")
    print("|---|---|---|---|---|---|---|")
    for name, kind, extra in servers:
        m = med[name]
        label = f"{name} (`{kind}{' ' + ' '.join(extra) if extra else ''}`)"
        print(
            f"| {label} | {args.rounds} x {args.seconds} | {m['rps']:.0f} | {m['p50_ms']:.1f} | "
            f"{m['p99_ms']:.1f} | {ratios[name]:.2f}x | {m['errors']} |"
        )


if __name__ == "__main__":
    main()
