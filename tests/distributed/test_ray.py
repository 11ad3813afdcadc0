"""Ray: unreachable clusters fail fast; Ray Train (2 workers) and Ray Data batch prediction on a local instance."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'imagerec[distributed]')")

from imagefixtures import write_colour_dataset  # noqa: E402
from imagerec.cli import main  # noqa: E402
from imagerec.errors import ImagerecError  # noqa: E402


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_unreachable_ray_address_fails_fast():
    from imagerec.distributed.ray import init_ray

    t0 = time.monotonic()
    with pytest.raises(ImagerecError, match=r"cannot reach the Ray cluster at '127\.0\.0\.1:\d+' within 2s"):
        init_ray(f"127.0.0.1:{_closed_port()}", timeout=2)
    assert time.monotonic() - t0 < 10
    with pytest.raises(ImagerecError, match="is not host:port"):
        init_ray("no-port-here", timeout=2)


def test_cli_ray_errors_are_one_line(tmp_path, capsys, colour_data):
    code, _, err = _cli(
        [
            "train",
            str(colour_data),
            "--out",
            str(tmp_path / "r"),
            "--ray",
            "--ray-address",
            f"127.0.0.1:{_closed_port()}",
        ],
        capsys,
    )
    assert code == 2 and err.count("imagerec: error:") == 1 and "cannot reach the Ray cluster" in err
    code, _, err = _cli(["predict", str(tmp_path / "r"), str(colour_data), "--ray"], capsys)
    assert code == 2 and "add --out results.parquet" in err and "Traceback" not in err
    code, _, err = _cli(
        ["predict", str(tmp_path / "r"), str(colour_data), "--ray", "--out", str(tmp_path / "x.csv")], capsys
    )
    assert code == 2 and "must end in .parquet or .jsonl" in err


@pytest.fixture(scope="module")
def local_ray():
    from imagerec.distributed.ray import init_ray

    ray = init_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()


def test_written_rows_carry_label_sets_and_read_back_as_predict_json():
    """A row of ``predict --ray`` output keeps a multi-label answer (labels, scores) and the OOD score: its JSON
    line is the object ``imagerec predict --format json`` prints (no Ray needed: the row codec itself)."""
    import pyarrow as pa

    from imagerec.distributed.ray import _json_line, _row, _schema
    from imagerec.prediction import Prediction, PredictionError

    sets = Prediction("red", 0.9, [("red", 0.9), ("blue", 0.7)], "a.png", labels=["red", "blue"],
                      scores={"blue": 0.7, "green": 0.1, "red": 0.9}, ood_score=1.25)  # fmt: skip
    unknown = Prediction("unknown", 0.2, [("red", 0.2)], "b.png", labels=[], scores={"red": 0.2},
                         reason="low_confidence")  # fmt: skip
    single = Prediction("green", 0.8, [("green", 0.8)], "c.png")
    failed = PredictionError("d.png", "unsupported_format", "not an image")
    results = [sets, unknown, single, failed]
    table = pa.Table.from_pylist([_row(r.source, r) for r in results], schema=_schema())
    rows = table.to_pylist()
    assert rows[0]["labels"] == ["red", "blue"] and rows[2]["labels"] is None
    for row, result in zip(rows, results, strict=True):
        assert json.loads(_json_line(row)) == result.to_dict()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ray_train_then_ray_data_predict_matches_single_process(tmp_path, local_ray, capsys):
    from imagerec.classifier import Classifier
    from imagerec.distributed.ray import predict_with_ray, train_with_ray

    data = write_colour_dataset(tmp_path / "data", per_class=12, seed=5)
    run = train_with_ray(
        data, tmp_path / "run", num_workers=2, epochs=3, batch_size=8, seed=0, augment="none"
    )
    strategy = run.config["strategy"]
    assert (
        strategy["name"] == "multiworker" and strategy["workers"] == 2 and strategy["global_batch_size"] == 16
    )
    assert (run.path / "model.keras").exists() and run.metrics["epochs_completed"] == 3

    (data / "red" / "broken.png").write_bytes(b"not an image")
    parquet = tmp_path / "results.parquet"
    summary = predict_with_ray(run.path, [str(data)], parquet, num_workers=2, batch_size=8, top_k=3)
    assert summary["images"] == 37 and summary["failed"] == 1

    import pyarrow.parquet as pq

    rows = pq.read_table(parquet).to_pylist()
    paths = sorted(p for p in data.rglob("*.png"))
    assert [r["path"] for r in rows] == [str(p.resolve()) for p in paths]  # input order kept
    expected = Classifier.load(run.path).predict([str(p) for p in paths], top_k=3, errors="return")
    for row, want in zip(rows, expected, strict=True):
        if hasattr(want, "code"):
            assert row["label"] is None and row["error_code"] == want.code
            continue
        assert row["label"] == want.label and row["error_code"] is None
        assert row["confidence"] == pytest.approx(want.confidence, abs=1e-5)
        assert [t["label"] for t in row["top_k"]] == [lab for lab, _ in want.top_k]
        assert [t["score"] for t in row["top_k"]] == pytest.approx([s for _, s in want.top_k], abs=1e-5)

    jsonl = tmp_path / "results.jsonl"  # the CLI path writes the rows `imagerec predict --format json` prints
    code, _, err = _cli(
        [
            "predict",
            str(run.path),
            str(data),
            "--ray",
            "--out",
            str(jsonl),
            "--num-workers",
            "2",
            "--top-k",
            "3",
        ],
        capsys,
    )
    assert code == 1 and "1 failed" in err  # one unreadable file -> exit 1, like `imagerec predict`
    code, out, _ = _cli(["predict", str(run.path), str(data), "--format", "json", "--top-k", "3"], capsys)
    plain = {Path(r["path"]).resolve(): r for r in map(json.loads, out.splitlines())}
    ray_rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(ray_rows) == len(plain) == 37
    for r in ray_rows:
        p = plain[Path(r["path"])]
        if "error" in r:
            assert r["error"]["code"] == p["error"]["code"]
            continue
        assert r["label"] == p["label"] and r["confidence"] == pytest.approx(p["confidence"], abs=2e-6)
        assert [t["label"] for t in r["top_k"]] == [t["label"] for t in p["top_k"]]


@pytest.mark.slow  # about 100 s on 2 cores: a local Ray instance and two Ray Train workers start
@pytest.mark.timeout(900)
def test_cli_train_with_ray_two_workers(tmp_path):
    """``imagerec train DATA --out RUN --ray --num-workers 2`` in its own process (it starts a local Ray)."""
    import os
    import subprocess
    import sys

    data = write_colour_dataset(tmp_path / "data", per_class=8, seed=2)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "imagerec", "train", str(data), "--out", str(run), "--ray", "--num-workers", "2",
           "--epochs", "1", "--batch-size", "4", "--seed", "0", "--augment", "none"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"} | {
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "RAY_DEDUP_LOGS": "0",
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imagerec: error" not in proc.stderr
    strategy = json.loads((run / "config.json").read_text())["strategy"]
    assert strategy["name"] == "multiworker" and strategy["workers"] == 2 and strategy["replicas"] == 2
    assert strategy["chief"] and strategy["global_batch_size"] == 8
    assert (run / "model.keras").is_file()
    assert json.loads((run / "metrics.json").read_text())["epochs_completed"] == 1
    workers = {
        line.split("worker worker:")[1][0] for line in proc.stdout.splitlines() if "worker worker:" in line
    }
    assert workers == {"0", "1"}, proc.stdout[-2000:]  # both Ray Train workers took part
