"""Soak test (RELIABILITY C23): a bounded open-loop load against a real ``imagerec serve`` with ~10% malformed uploads.

It starts ``imagerec serve RUN`` as a subprocess on 127.0.0.1 with a private TMPDIR, and sends requests on a fixed
schedule (open loop: each latency is measured from the request's *scheduled* time, so a stalled server cannot
hide its queueing, which is the wrk2 fix for coordinated omission). Concurrency is bounded. It reports:
- status counts: zero 5xx is the bar, and a malformed upload must get a 4xx;
- latency p50/p95/p99 of the valid requests;
- the server's RSS every second and its slope (MB/min, least squares after the warm-up);
- open file descriptors and files in the server's TMPDIR, before and after.

Usage:
    python bench/soak.py [--run RUN] [--seconds 600] [--rps 50] [--concurrency 16] [--json out.json]

Without ``--run`` it trains a tiny 3-class run first (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# inputs --------------------------------------------------------------------------------------------------
def _encode(arr: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def valid_images(n: int = 24, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    colours = [(220, 30, 30), (30, 200, 40), (30, 40, 220)]
    out = []
    for i in range(n):
        base = np.array(colours[i % 3], np.float32)
        arr = np.clip(base + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
        out.append(_encode(arr, "PNG" if i % 2 else "JPEG"))
    return out


def malformed_requests() -> list[tuple[str, dict, bytes]]:
    """(kind, headers, body) of requests that must get a 4xx: broken images and broken requests."""
    jpeg = _encode(np.zeros((32, 32, 3), np.uint8), "JPEG")
    sof = bytearray(jpeg)
    i = sof.find(b"\xff\xc0")
    sof[i + 5 : i + 9] = struct.pack(">HH", 60000, 60000)
    bomb_rows = 20000
    import zlib

    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(b"\x00" + bytes(bomb_rows // 8)) for _ in range(bomb_rows)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", bomb_rows, bomb_rows, 1, 0, 0, 0, 0))
    bomb += chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    images = {
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "random_bytes": os.urandom(2048),
        "text_as_jpeg": b"hello, this is not an image\n" * 10,
        "empty": b"",
        "huge_sof": bytes(sof),
        "png_bomb": bomb,
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
    }
    out = []
    for kind, data in images.items():
        body, ctype = _multipart({"file": ("x.jpg", data)})
        out.append((kind, {"content-type": ctype}, body))
    body, ctype = _multipart({"photo": ("x.jpg", jpeg)})
    out.append(("wrong_field", {"content-type": ctype}, body))
    out.append(
        ("bad_multipart", {"content-type": "multipart/form-data; boundary=zzz"}, b"--yyy\r\nnot a form\r\n")
    )
    out.append(("no_boundary", {"content-type": "multipart/form-data"}, b"x"))
    out.append(("too_large", {"content-type": "application/octet-stream"}, bytes(3 << 20)))
    return out


def _multipart(fields: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "soak" + os.urandom(8).hex()
    parts = []
    for name, (filename, data) in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# the server process -----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _tmp_files(tmp: Path) -> int:
    return sum(1 for _ in tmp.rglob("*"))


def train_tiny_run(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import imagerec
    from imagefixtures import write_colour_dataset

    data = write_colour_dataset(root / "data", per_class=12, seed=1)
    return imagerec.train(data, out=root / "run", epochs=4, batch_size=16, seed=0, log=lambda *_: None).path


def slope_mb_per_min(samples: list[tuple[float, int]]) -> float:
    if len(samples) < 3:
        return float("nan")
    t = np.array([s[0] for s in samples])
    r = np.array([s[1] for s in samples]) / 2**20
    return float(np.polyfit(t, r, 1)[0] * 60)


# the load -----------------------------------------------------------------------------------------------------
async def soak(
    url: str, pid: int, seconds: float, rps: float, concurrency: int, bad_ratio: float, seed: int
) -> dict:
    import httpx

    rng = random.Random(seed)
    good = valid_images()
    bad = malformed_requests()
    sem = asyncio.Semaphore(concurrency)
    records: list[dict] = []
    rss: list[tuple[float, int]] = []
    t0 = time.perf_counter()

    async def one(client, scheduled: float) -> None:
        if rng.random() < bad_ratio:
            kind, headers, body = rng.choice(bad)
        else:
            kind = "valid"
            body, ctype = _multipart({"file": ("img.png", rng.choice(good))})
            headers = {"content-type": ctype}
        async with sem:
            try:
                resp = await client.post(f"{url}/v1/predict", content=body, headers=headers)
                status = resp.status_code
                ok_json = resp.headers.get("content-type", "").startswith("application/json")
            except httpx.HTTPError as exc:
                status, ok_json = f"client:{type(exc).__name__}", False
        records.append(
            {"kind": kind, "status": status, "latency": time.perf_counter() - scheduled, "json": ok_json}
        )

    async def sample_rss() -> None:
        while time.perf_counter() - t0 < seconds:
            rss.append((time.perf_counter() - t0, _rss(pid)))
            await asyncio.sleep(1.0)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        sampler = asyncio.create_task(sample_rss())
        tasks = []
        n = int(seconds * rps)
        for i in range(n):
            scheduled = t0 + i / rps
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(client, scheduled)))
        await asyncio.gather(*tasks)
        await sampler
    return {"records": records, "rss": rss, "elapsed": time.perf_counter() - t0}


def summarise(result: dict, warmup_s: float) -> dict:
    records = result["records"]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    valid = sorted(r["latency"] for r in records if r["kind"] == "valid" and r["status"] == 200)
    bad = [r for r in records if r["kind"] != "valid"]

    def pct(q: float) -> float:
        return round(1000 * valid[min(len(valid) - 1, int(q * len(valid)))], 1) if valid else float("nan")

    steady = [s for s in result["rss"] if s[0] >= warmup_s]
    return {
        "requests": len(records),
        "achieved_rps": round(len(records) / result["elapsed"], 1),
        "statuses": statuses,
        "server_errors_5xx": sum(1 for r in records if isinstance(r["status"], int) and r["status"] >= 500),
        "client_errors": sum(1 for r in records if not isinstance(r["status"], int)),
        "malformed": len(bad),
        "malformed_not_4xx": sorted(
            {r["kind"] for r in bad if not (isinstance(r["status"], int) and 400 <= r["status"] < 500)}
        ),
        "malformed_non_json": sum(1 for r in bad if not r["json"]),
        "valid_ok": len(valid),
        "latency_ms": {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0)},
        "rss_mb": {
            "start": round(steady[0][1] / 2**20, 1) if steady else None,
            "end": round(steady[-1][1] / 2**20, 1) if steady else None,
        },
        "rss_slope_mb_per_min": round(slope_mb_per_min(steady), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run directory to serve (default: train a tiny one)")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rps", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bad-ratio", type=float, default=0.10)
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds excluded from the RSS slope")
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="imagerec-soak-"))
    run = args.run or train_tiny_run(work)
    server_tmp = work / "server-tmp"
    server_tmp.mkdir()
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(server_tmp), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [
        str(Path(sys.executable).with_name("imagerec")),
        "serve",
        str(run),
        "--port",
        str(port),
        "--max-upload-mb",
        "2",
    ]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"server did not become ready: {server.stderr.read()[-2000:] if server.stderr else ''}"
                )
            time.sleep(0.5)
        before = {
            "fds": _fds(server.pid),
            "tmp_files": _tmp_files(server_tmp),
            "rss_mb": round(_rss(server.pid) / 2**20, 1),
        }
        result = asyncio.run(
            soak(url, server.pid, args.seconds, args.rps, args.concurrency, args.bad_ratio, seed=0)
        )
        time.sleep(1.0)
        after = {
            "fds": _fds(server.pid),
            "tmp_files": _tmp_files(server_tmp),
            "rss_mb": round(_rss(server.pid) / 2**20, 1),
        }
        summary = {
            "config": {
                "seconds": args.seconds,
                "rps": args.rps,
                "concurrency": args.concurrency,
                "bad_ratio": args.bad_ratio,
            },
            **summarise(result, args.warmup),
            "before": before,
            "after": after,
            "server_alive": server.poll() is None,
        }
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    passed = (
        summary["server_errors_5xx"] == 0 and not summary["malformed_not_4xx"] and summary["server_alive"]
    )
    passed = passed and after["tmp_files"] <= before["tmp_files"] and after["fds"] <= before["fds"] + 2
    print("PASS" if passed else "FAIL", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
