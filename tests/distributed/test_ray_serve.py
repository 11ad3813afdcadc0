"""``imagerec serve --ray``: the options' misuse is a one-line error; on a local Ray instance two replicas both
answer (API key and all), a killed replica is replaced with no failed request beyond the one in flight, and Ctrl-C
stops everything."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from imagefixtures import COLOURS, make_image, run_cli
from server.conftest import free_port, png_bytes

SRC = Path(__file__).resolve().parents[2] / "src"
RED = png_bytes(make_image(COLOURS["red"], np.random.default_rng(3)))
KEY = "ray-serve-test-key"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", "2"], "--replicas needs --ray"),
        (["--autoscale", "1,3"], "--autoscale needs --ray"),
        (["--ray", "--workers", "2"], "with --ray use --replicas N or --autoscale MIN,MAX"),
        (["--ray", "--autoscale", "3,1"], "--autoscale takes MIN,MAX with 0 <= MIN <= MAX"),
        (["--ray", "--autoscale", "one,two"], "--autoscale takes MIN,MAX (two whole numbers)"),
        (["--ray", "--replicas", "2", "--autoscale", "1,2"], "not both"),
        (["--ray", "--replicas", "0"], "--replicas must be >= 1"),
    ],
)
def test_ray_options_misused_are_one_line_errors(trained_run, capsys, args, message):
    code, _, err = run_cli(capsys, "serve", str(trained_run), "--port", str(free_port()), *args)
    assert code == 2 and message in err and err.count("imagerec: error:") == 1 and "Traceback" not in err, err


def _wait_for(condition, what: str, proc: subprocess.Popen, log: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not after {timeout:.0f} s (exit {proc.poll()})\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.2)
    return value


# A second Ray driver that looks at (and kills) the replicas: a subprocess, so that the Ray cluster's auth settings
# are read from its environment when it imports Ray (the test process may have imported Ray already).
PROBE = r"""
import json, sys
import ray
from ray import serve

ray.init(address=sys.argv[1], include_dashboard=False, configure_logging=False, log_to_driver=False)
alive = sorted((a["name"], a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith("SERVE_REPLICA::imagerec#"))
status = serve.status().applications["imagerec"].status
out = {"alive": [a[0] for a in alive], "status": str(getattr(status, "value", status))}
if sys.argv[2] == "info":  # ask until every replica has said who it is (the router picks them at random)
    handle, seen = serve.get_app_handle("imagerec"), {}
    for _ in range(100):
        info = handle.replica_info.remote().result(timeout_s=60)
        seen[info["pid"]] = info
        if len(seen) == len(alive):
            break
    out["replicas"] = sorted(seen.values(), key=lambda i: i["pid"])
elif sys.argv[2] == "kill":
    ray.kill(ray.get_actor(alive[0][0], namespace=alive[0][1]), no_restart=True)
    out["victim"] = alive[0][0]
print("PROBE " + json.dumps(out), flush=True)
"""


def _probe(address: str, command: str, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, address, command], env=env, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")), None)
    assert done.returncode == 0 and line, (
        f"probe {command} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    )
    return json.loads(line[len("PROBE ") :])


@pytest.mark.slow  # a local Ray instance, its Serve controller and proxy, two replicas importing TensorFlow: 1-3 min
def test_two_replicas_answer_and_a_killed_one_is_replaced(trained_run, tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "imagerec", "serve", str(trained_run), "--ray", "--replicas", "2",
           "--replica-cpus", "0.5", "--port", str(port), "--api-key", KEY]  # fmt: skip
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    # the local Ray instance and the probes share one cluster token (Ray's token authentication)
    env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # fmt: skip
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        text = lambda: log.read_text(errors="replace")  # noqa: E731
        found = _wait_for(lambda: re.search(r"Ray Serve is serving on \S+ with 2 replica\(s\) on a local Ray "
                                            r"instance at (\S+);", text()), "Ray Serve up", proc, log)  # fmt: skip
        address = found.group(1)
        url, headers = f"http://127.0.0.1:{port}", {"X-API-Key": KEY}
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/readyz").status_code == 200
            assert client.get("/v2/health/ready").status_code == 200
            refused = client.post("/v1/predict", content=RED)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
            for _ in range(40):
                answer = client.post("/v1/predict", content=RED, headers=headers)
                assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "red"
        before = _probe(address, "info", env)
        assert len(before["alive"]) == 2 and len(before["replicas"]) == 2, before
        # both replicas answered HTTP requests, and together they answered every one of them
        assert all(r["answered"] > 0 for r in before["replicas"]), before
        assert sum(r["answered"] for r in before["replicas"]) == 40, before

        failures: list[int] = []
        sent = [0]
        done = threading.Event()

        def client_loop() -> None:  # one request at a time: at most one is in flight when the replica dies
            with httpx.Client(base_url=url, timeout=60) as client:
                while not done.is_set():
                    status = client.post("/v1/predict", content=RED, headers=headers).status_code
                    sent[0] += 1
                    if status != 200:
                        failures.append(status)

        loop = threading.Thread(target=client_loop, daemon=True)
        loop.start()
        try:
            _wait_for(lambda: sent[0] >= 5, "client running", proc, log, timeout=60)
            victim = _probe(address, "kill", env)["victim"]

            def replaced() -> bool:
                state = _probe(address, "status", env)
                return (
                    len(state["alive"]) == 2 and victim not in state["alive"] and state["status"] == "RUNNING"
                )

            _wait_for(replaced, "a new replica in place of the killed one", proc, log)
            after = sent[0]
            _wait_for(lambda: sent[0] >= after + 20, "answers after the replacement", proc, log, timeout=120)
        finally:
            done.set()
            loop.join(60)
        assert len(failures) <= 1, f"{failures} of {sent[0]} requests failed"
        now = _probe(address, "info", env)
        assert len(now["replicas"]) == 2 and {r["pid"] for r in now["replicas"]} != {
            r["pid"] for r in before["replicas"]
        }
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the app is deleted, the local Ray instance stopped
        assert proc.wait(timeout=120) == 0, text()
        assert "Traceback" not in text(), text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
