"""End to end: ``imagerec export`` and ``imagerec benchmark`` on a copy of the session's trained run."""

from __future__ import annotations

import json

from imagerec import Classifier


def test_export_then_benchmark_then_auto_runtime(run_copy, capsys, cli):
    assert (
        cli(["export", str(run_copy), "--format", "tflite", "--quantize", "dynamic", "--parity-images", "8"])
        == 0
    )
    out = capsys.readouterr().out
    assert "tflite dynamic" in out and "100.00%" in out
    record = json.loads((run_copy / "exports" / "tflite-dynamic" / "export.json").read_text())
    assert record["quantization"] == "dynamic" and record["parity"]["passed"]

    assert cli(["benchmark", str(run_copy), "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "keras" in out and "tflite-dynamic" in out and "default runtime" in out
    bench = json.loads((run_copy / "exports" / "benchmark.json").read_text())
    names = {r["runtime"] for r in bench["runtimes"]}
    assert names == {"keras", "tflite-dynamic"}
    for row in bench["runtimes"]:
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"]
        assert row["throughput_b1"] > 0 and row["throughput_b8"] > 0 and row["throughput_b64"] > 0
        assert row["size_bytes"] > 0 and row["accuracy"] is not None and row["peak_rss_delta_mb"] >= 0
    fastest = min(bench["runtimes"], key=lambda r: r["latency_p50_ms"])["runtime"]
    assert bench["default"] == fastest
    chosen = json.loads((run_copy / "exports" / "runtime.json").read_text())["runtime"]
    assert Classifier.load(run_copy).runtime == chosen == fastest
