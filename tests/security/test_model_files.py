"""RELIABILITY A1-A5, A7: hostile model files are refused before Keras runs anything from them."""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest

from imagerec.errors import ModelFileError
from imagerec.run import HASH_SUFFIX, load_model_file, prescan_keras_file, save_model_file

from .conftest import rewrite_config, tiny_model, write_manifest
from .shared import COLOURS, make_image

SRC = Path(__file__).resolve().parents[2] / "src"


def _safe_mode_flag():
    from keras.src.saving import serialization_lib

    return serialization_lib.in_safe_mode()


@pytest.fixture
def keras_spy(monkeypatch):
    """Record every call to ``keras.saving.load_model`` (it still runs for real)."""
    import keras

    calls = []
    real = keras.saving.load_model

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(keras.saving, "load_model", spy)
    return calls


# A1 ------------------------------------------------------------------------------------------------------
def test_a1_lambda_with_marshalled_bytecode_is_refused_and_never_runs(tmp_path):
    from keras import layers

    sentinel = tmp_path / "pwned"

    touch = lambda x, path=str(sentinel): (open(path, "w").close(), x)[1]  # noqa: E731 - a lambda is the point

    path = tmp_path / "evil" / "model.keras"
    save_model_file(tiny_model(layers.Lambda(touch)), path)  # a correct manifest: the hash check passes
    assert "__lambda__" in zipfile.ZipFile(path).read("config.json").decode()  # bytecode really is inside
    sentinel.unlink()  # building the model ran it once, here in the test

    with pytest.raises(ModelFileError, match="Lambda"):
        load_model_file(path)
    assert not sentinel.exists()

    import keras  # defence in depth: Keras' own safe_mode refuses it too, if the pre-scan ever missed it

    with pytest.raises(ValueError, match="(?i)unsafe|lambda"):
        keras.saving.load_model(path, safe_mode=True)
    assert not sentinel.exists()


def _lambda_layer(run: Path, good: Path) -> str:
    rewrite_config(good, run / "model.keras", lambda c: c["config"]["layers"][1].update(class_name="Lambda"))
    return "Lambda"


def _one_byte_changed(run: Path, good: Path) -> str:
    data = bytearray(good.read_bytes())
    data[data.find(b"HDF") + 4000] ^= (
        0x01  # inside the stored weights: the zip stays valid, the manifest does not
    )
    (run / "model.keras").write_bytes(bytes(data))
    return "expected [0-9a-f]{64}, actual [0-9a-f]{64}"


@pytest.mark.parametrize("tamper", [_lambda_layer, _one_byte_changed], ids=["lambda", "one-byte"])
def test_a1_refused_load_keeps_the_previous_model_serving(trained_run, tmp_path, tamper):
    """``imagerec serve`` (a real process) on a tampered run exits 2 with one error line and never serves, while
    a server already running the genuine model keeps answering."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx
    import numpy as np

    from imagerec import Classifier
    from imagerec.server.app import ServeSettings, create_app
    from server.conftest import LiveServer, free_port, png_bytes

    bad = tmp_path / "run"
    shutil.copytree(trained_run, bad)
    why = tamper(bad, trained_run / "model.keras")
    image = png_bytes(make_image(COLOURS["red"], np.random.default_rng(5)))
    app = create_app(Classifier.load(trained_run), ServeSettings(decode_workers=0))
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        assert client.post("/v1/predict", content=image).json()["predictions"][0]["label"] == "red"
        port, log = free_port(), tmp_path / "serve.log"
        cmd = [
            sys.executable,
            "-m",
            "imagerec",
            "serve",
            str(bad),
            "--port",
            str(port),
            "--log-level",
            "info",
        ]
        path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
        with open(log, "w") as out:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=out, text=True, cwd=tmp_path,
                env={**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )  # fmt: skip
        try:  # until it exits, or fails the test as soon as it starts serving
            deadline = time.monotonic() + 300
            while proc.poll() is None and "Started server process" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        stderr = log.read_text()
        assert "Started server process" not in stderr and "Uvicorn running" not in stderr, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("imagerec: error:")]
        assert proc.returncode == 2, stderr
        assert len(errors) == 1 and re.search(why, errors[0]) and "Traceback" not in stderr, stderr
        with socket.socket() as sock:  # nothing is left listening on the port it was given
            assert sock.connect_ex(("127.0.0.1", port)) != 0
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/predict", content=image).json()["predictions"][0]["label"] == "red"


# A2 ------------------------------------------------------------------------------------------------------
def _layer(config):
    return config["config"]["layers"][1]


HOSTILE_CONFIGS = {
    "os.system": lambda c: _layer(c).update(module="os", class_name="system", registered_name=None),
    "builtins.exec": lambda c: _layer(c).update(module="builtins", class_name="exec"),
    "exec as a function": lambda c: _layer(c)["config"].update(
        activation={
            "module": "builtins",
            "class_name": "function",
            "config": "exec",
            "registered_name": "function",
        }
    ),
    "enable_unsafe_deserialization": lambda c: _layer(c).update(
        module="keras.config", class_name="enable_unsafe_deserialization"
    ),
    "safe_mode key": lambda c: _layer(c)["config"].update(safe_mode=False),
    "load_model(safe_mode=False)": lambda c: _layer(c).update(
        module="keras.saving",
        class_name="load_model",
        config={"filepath": "/tmp/x.keras", "safe_mode": False},
    ),
    "custom object": lambda c: _layer(c).update(module=None, registered_name="evil>Backdoor"),
}


@pytest.mark.parametrize("name", list(HOSTILE_CONFIGS))
def test_a2_config_naming_arbitrary_code_is_refused_and_flag_stays_off(
    name, tiny_model_file, tmp_path, keras_spy
):
    path = rewrite_config(tiny_model_file, tmp_path / "evil" / "model.keras", HOSTILE_CONFIGS[name])
    with pytest.raises(ModelFileError, match="refused|module|mentions|custom object|uses"):
        load_model_file(path)
    assert keras_spy == []
    assert _safe_mode_flag() is not False


def test_a2_unsafe_flag_switched_on_elsewhere_blocks_loading_and_is_reset(tiny_model_file):
    import keras

    keras.config.enable_unsafe_deserialization()
    try:
        with pytest.raises(ModelFileError, match="unsafe deserialization"):
            load_model_file(tiny_model_file)
        assert _safe_mode_flag() is not False
    finally:
        from keras.src.backend.common import global_state

        global_state.set_global_attribute("safe_mode_saving", None)
    assert load_model_file(tiny_model_file).name == "tiny"


def test_a2_keras_itself_refuses_non_modelling_apis(tiny_model_file, tmp_path):
    import keras

    path = rewrite_config(
        tiny_model_file, tmp_path / "evil" / "model.keras", HOSTILE_CONFIGS["enable_unsafe_deserialization"]
    )
    with pytest.raises(Exception):  # noqa: B017 - any refusal; what matters is the flag below
        keras.saving.load_model(path, safe_mode=True)
    assert _safe_mode_flag() is not False


# A3 ------------------------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_a3_other_formats_are_rejected_before_keras(tmp_path, keras_spy):
    sentinel = str(tmp_path / "pwned")
    h5 = tmp_path / "m.h5"
    tiny_model().save(h5)  # a real legacy HDF5 model
    saved_model = tmp_path / "saved_model"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"\x08\x01")
    keras_named_dir = tmp_path / "dir" / "model.keras"
    keras_named_dir.mkdir(parents=True)
    pickled = pickle.dumps(_Payload(sentinel))
    candidates = [
        h5,
        h5.with_suffix(".hdf5"),
        saved_model,
        keras_named_dir,
        tmp_path / "m.pkl",
        tmp_path / "m.joblib",
    ]
    shutil.copy(h5, candidates[1])
    candidates[4].write_bytes(pickled)
    candidates[5].write_bytes(pickled)
    disguised = {"h5.keras": h5.read_bytes(), "pickle.keras": pickled}
    for name, data in disguised.items():
        path = tmp_path / name
        path.write_bytes(data)
        write_manifest(path)
        candidates.append(path)
    for path in candidates:
        with pytest.raises(ModelFileError):
            load_model_file(path)
    assert keras_spy == []
    assert not Path(sentinel).exists()


def test_a3_tfsmlayer_archive_is_rejected(tiny_model_file, tmp_path, keras_spy):
    def tfsm(config):
        _layer(config).update(
            module="keras.layers",
            class_name="TFSMLayer",
            config={"filepath": "/tmp/sm", "call_endpoint": "serve"},
        )

    path = rewrite_config(tiny_model_file, tmp_path / "evil" / "model.keras", tfsm)
    with pytest.raises(ModelFileError, match="TFSMLayer"):
        load_model_file(path)
    assert keras_spy == []


# A4 ------------------------------------------------------------------------------------------------------
def _zip(
    path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]], compression=zipfile.ZIP_STORED
) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def _hostile_archives(root: Path, good: Path) -> dict[str, Path]:
    warnings.filterwarnings("ignore", "Duplicate name", UserWarning)
    root.mkdir()
    base = [("metadata.json", b"{}"), ("config.json", zipfile.ZipFile(good).read("config.json"))]
    symlink = zipfile.ZipInfo("assets/link")
    symlink.external_attr = (0o120777 << 16) | 0x20
    absolute = zipfile.ZipInfo("assets/x")
    absolute.filename = "/tmp/imagerec-abs-x"
    out = {
        "bomb": _zip(
            root / "bomb.keras", [*base, ("model.weights.h5", bytes(64 << 20))], zipfile.ZIP_DEFLATED
        ),
        "dotdot": _zip(root / "dotdot.keras", [*base, ("../x", b"owned")]),
        "absolute": _zip(root / "absolute.keras", [*base, (absolute, b"owned")]),
        "symlink": _zip(root / "symlink.keras", [*base, (symlink, b"/etc/passwd")]),
        "many": _zip(root / "many.keras", [*base, *((f"assets/{i}", b"") for i in range(5000))]),
        "duplicate": _zip(root / "duplicate.keras", [*base, ("config.json", b"{}")]),
        "foreign": _zip(root / "foreign.keras", [*base, ("payload.py", b"import os")]),
        "empty": root / "empty.keras",
        "not_zip": root / "not_zip.keras",
        "truncated": root / "truncated.keras",
    }
    out["empty"].write_bytes(b"")
    out["not_zip"].write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    data = good.read_bytes()
    out["truncated"].write_bytes(data[: len(data) // 2])
    return out


def test_a4_hostile_archives_are_refused_by_the_prescan_fast_and_small(tiny_model_file, tmp_path, bounded):
    archives = _hostile_archives(tmp_path / "hostile", tiny_model_file)
    results = bounded(
        f"""
        from pathlib import Path
        from imagerec.run import prescan_keras_file
        paths = {json.dumps({k: str(v) for k, v in archives.items()})}
        print(json.dumps({{k: measure(prescan_keras_file, Path(v)) for k, v in paths.items()}}))
        """
    )
    for name, (outcome, seconds, rss) in results.items():
        assert outcome.startswith("ModelFileError"), (name, outcome)
        assert seconds < 1.0, (name, seconds)
        assert rss < 50 << 20, (name, rss)


def test_a4_refused_archives_write_nothing_and_leave_no_temp_dir(
    tiny_model_file, tmp_path, keras_spy, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # a private temp root: other processes share /tmp
    archives = _hostile_archives(tmp_path / "hostile", tiny_model_file)
    before = set(Path(tempfile.gettempdir()).glob("imagerec-model-*"))
    for path in archives.values():
        write_manifest(path) if path.stat().st_size else None
        with pytest.raises(ModelFileError):
            load_model_file(path)
    assert keras_spy == []
    assert set(Path(tempfile.gettempdir()).glob("imagerec-model-*")) == before
    assert sorted(
        p.name for p in (tmp_path / "hostile").iterdir() if not p.name.endswith(HASH_SUFFIX)
    ) == sorted(p.name for p in archives.values())
    assert not (tmp_path / "x").exists() and not Path("/tmp/imagerec-abs-x").exists()


def test_a4_genuine_file_loads_through_a_private_copy_that_is_removed(tiny_model_file, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: seen.append(real_mkdtemp(*a, **k)) or seen[-1])
    before = set(Path(tempfile.gettempdir()).glob("imagerec-model-*"))
    prescan_keras_file(tiny_model_file)
    assert load_model_file(tiny_model_file).name == "tiny"
    assert set(Path(tempfile.gettempdir()).glob("imagerec-model-*")) == before
    assert len(seen) == 1 and seen[0].startswith(str(tmp_path)) and not Path(seen[0]).exists()


def test_a4_symlinked_model_file_is_refused(tiny_model_file, tmp_path, keras_spy):
    """A run whose ``model.keras`` is a symlink (to a genuine file, manifest intact) is refused before Keras."""
    from imagerec.run import RunDir

    run = tmp_path / "linked-run"
    run.mkdir()
    (run / "model.keras").symlink_to(tiny_model_file)
    shutil.copy2(str(tiny_model_file) + HASH_SUFFIX, str(run / "model.keras") + HASH_SUFFIX)
    before = set(Path(tempfile.gettempdir()).glob("imagerec-model-*"))
    for load in (lambda: load_model_file(run / "model.keras"), RunDir(run).load_model):
        with pytest.raises(ModelFileError, match="not a regular file .*symlink"):
            load()
    assert keras_spy == [] and set(Path(tempfile.gettempdir()).glob("imagerec-model-*")) == before
    assert load_model_file(tiny_model_file).name == "tiny"  # the target itself is fine


# A5 ------------------------------------------------------------------------------------------------------
def test_a5_one_byte_changed_is_refused_with_expected_and_actual_logged(tiny_model_file, caplog):
    data = bytearray(tiny_model_file.read_bytes())
    offset = data.find(b"HDF") + 4000  # inside the stored weights: the zip stays valid, the pre-scan passes
    data[offset] ^= 0x01
    tiny_model_file.write_bytes(bytes(data))
    prescan_keras_file(tiny_model_file)
    expected = json.loads(Path(str(tiny_model_file) + HASH_SUFFIX).read_text())["sha256"]
    with (
        caplog.at_level(logging.ERROR),
        pytest.raises(ModelFileError, match=f"expected {expected}, actual [0-9a-f]{{64}}"),
    ):
        load_model_file(tiny_model_file)
    assert re.search(f"expected {expected}, actual [0-9a-f]{{64}}", caplog.text)


def test_a5_missing_manifest_is_refused(tiny_model_file):
    Path(str(tiny_model_file) + HASH_SUFFIX).unlink()
    with pytest.raises(ModelFileError, match="manifest .* is missing"):
        load_model_file(tiny_model_file)


# A7 ------------------------------------------------------------------------------------------------------
UNSAFE_CALLS = {
    r"\bpickle\.loads?\(": "pickle.load",
    r"\bnp\.load\([^)]*allow_pickle\s*=\s*True": "np.load(allow_pickle=True)",
    r"\bmarshal\.loads?\(": "marshal.load",
    r"\bjoblib\.load\(": "joblib.load",
    r"safe_mode\s*=\s*False": "safe_mode=False",
    r"enable_unsafe_deserialization\(\)": "enable_unsafe_deserialization()",
    r"(?<![\w.])(eval|exec)\(": "eval/exec",
    r"\byaml\.load\(|\byaml\.unsafe_load\(": "yaml.load",
}


def test_a7_no_unsafe_deserialisation_in_product_code():
    found = []
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for pattern, label in UNSAFE_CALLS.items():
            for match in re.finditer(pattern, text):
                line = text[: match.start()].count("\n") + 1
                found.append(f"{path.relative_to(SRC)}:{line}: {label}")
    assert found == []


@pytest.mark.parametrize(
    "line, refused",
    [("x = eval(text)", True), ("exec(code)", True), ("obj = pickle.loads(blob)", True),
     ("model.eval()", False), ("pattern.exec(s)", False), ("value = my_eval(1)", False)],
)  # fmt: skip
def test_a7_audit_script_applies_the_static_rule(tmp_path, line, refused):
    """``.ci/audit.sh`` (what SECURITY.md promises) refuses the calls above before running pip-audit."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "mod.py").write_text(f"def f(text, code, blob, model, pattern, s):\n    {line}\n")
    proc = _run_audit_script(tmp_path, AUDIT_SERVICE="pypi")
    if refused:
        assert proc.returncode == 1 and "src/mod.py:2" in proc.stdout, proc.stdout + proc.stderr
        assert "pip-audit-ran" not in proc.stdout
    else:
        assert proc.returncode == 0 and "pip-audit-ran" in proc.stdout, proc.stdout + proc.stderr


def _run_audit_script(tmp_path, **env):
    """``.ci/audit.sh`` copied into ``tmp_path`` with a stand-in for ``python -m pip_audit`` (which needs the
    network) that echoes its arguments and exits ``$FAKE_RC``; other calls (the service probe) run real Python."""
    import subprocess
    import sys

    (tmp_path / ".ci").mkdir()
    shutil.copy(SRC.parent / ".ci" / "audit.sh", tmp_path / ".ci" / "audit.sh")
    (tmp_path / "src").mkdir(exist_ok=True)
    fake = tmp_path / "python"
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = -m ]; then echo "pip-audit-ran $*"; exit "${FAKE_RC:-0}"; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    fake.chmod(0o755)
    return subprocess.run(
        ["bash", str(tmp_path / ".ci" / "audit.sh")], env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake), **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def vuln_service():
    """A local stand-in for the PyPI JSON API and OSV: ``/pypi/<answer>`` and ``/osv/<answer>``, where answer is
    ``vulnerable`` (reports the canary's vulnerabilities), ``empty`` (answers, reports nothing) or anything else (404)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            service, _, answer = self.path.strip("/").partition("/")
            key = "vulnerabilities" if service == "pypi" else "vulns"
            if answer not in ("vulnerable", "empty"):
                self.send_error(404)
                return
            body = json.dumps({key: [{"id": "PYSEC-2022-10"}] if answer == "vulnerable" else []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "pypi, osv, service",
    [("missing", "missing", None), ("empty", "empty", None), ("vulnerable", "missing", "pypi"),
     ("missing", "vulnerable", "osv")],
)  # fmt: skip
def test_a7_audit_probes_the_vulnerability_service_and_skips_loudly_without_one(
    tmp_path, vuln_service, pypi, osv, service
):
    """No usable service (unreachable, or one that does not report the canary's known vulnerabilities, as a
    mirror serving only project pages does): one SKIPPED line, exit 0. A usable one: pip-audit runs against it
    over the environment minus the editable imagerec, and its failure (a known vulnerability) fails the gate."""
    urls = {"AUDIT_PYPI_URL": f"{vuln_service}/pypi/{pypi}", "AUDIT_OSV_URL": f"{vuln_service}/osv/{osv}"}
    proc = _run_audit_script(tmp_path, FAKE_RC="1", **urls)
    lines = proc.stdout.splitlines()
    if service is None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "pip-audit-ran" not in proc.stdout
        assert [line for line in lines if "SKIPPED" in line] == [lines[-1]], proc.stdout
    else:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        ran = [line for line in lines if line.startswith("pip-audit-ran")]
        assert ran == [f"pip-audit-ran -m pip_audit -s {service} --progress-spinner off --skip-editable"], (
            lines
        )
        assert "SKIPPED" not in proc.stdout


FLOORS = {
    "keras": (3, 15, 1),
    "tensorflow": (2, 21, 0),
    "pillow": (12, 1, 1),
    "h5py": (3, 12, 0),
    "starlette": (0, 49, 1),
    "python-multipart": (0, 0, 22),
    "opencv-python-headless": (4, 10, 0),
}


@pytest.mark.parametrize("package", list(FLOORS))
def test_a7_installed_dependencies_meet_patched_floors(package):
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version(package)
    except PackageNotFoundError:
        pytest.skip(f"{package} is an optional extra that is not installed")
    parts = tuple(int(p) for p in re.findall(r"\d+", installed)[:3])
    assert parts >= FLOORS[package], f"{package} {installed} is below the patched floor {FLOORS[package]}"


def test_a7_pyproject_pins_the_same_floors():
    text = (SRC.parent / "pyproject.toml").read_text()
    for package, floor in FLOORS.items():
        match = re.search(rf'"{re.escape(package)}>=([\d.]+)', text)
        assert match, f"pyproject.toml has no floor for {package}"
        assert tuple(int(p) for p in match.group(1).split(".")) + (0,) * 3 >= floor, package
