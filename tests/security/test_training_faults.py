"""RELIABILITY E27-E30: hostile training folders, kill -9 at any instant, NaN, and determinism."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import imagerec
from imagerec.errors import DataError
from imagerec.evaluation.plots import read_history
from imagerec.run import RunDir, prescan_keras_file, verify_hash
from imagerec.training.selection import best_epoch

from .shared import write_colour_dataset

ROOT = Path(__file__).resolve().parents[2]
QUIET = {"log": lambda *_: None}


def _tree_hashes(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(root))] = "link->" + os.readlink(path)
        elif path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _weights_hash(model) -> str:
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


# E27 -----------------------------------------------------------------------------------------------------
def _hostile_folder(root: Path) -> Path:
    data = write_colour_dataset(root / "data", per_class=8, size=16, seed=2)
    good = (data / "red" / "red_000.png").read_bytes()
    (data / "red" / "truncated.png").write_bytes(good[: len(good) // 2])
    (data / "red" / "zero.jpg").write_bytes(b"")
    (data / "green" / "notes.jpg").write_text("this is text, not a JPEG\n")
    (data / "green" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (data / "blue" / "._blue_000.png").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # AppleDouble
    outside = root / "outside.png"
    outside.write_bytes(good)
    (data / "blue" / "escape.png").symlink_to(outside)
    return data


def test_e27_bad_files_are_listed_with_reasons_and_sources_stay_byte_identical(tmp_path):
    data = _hostile_folder(tmp_path)
    before = _tree_hashes(data)
    result = imagerec.scan_dataset(data)
    reasons = {Path(item["path"]).name: item["reason"] for item in result.invalid}
    assert {"truncated.png", "zero.jpg", "notes.jpg"} <= set(reasons), reasons
    assert reasons["zero.jpg"].startswith("empty") and reasons["notes.jpg"].startswith("unsupported_format")
    used = {Path(img.path).name for img in result.images}
    assert not used & {".DS_Store", "._blue_000.png", "escape.png", "truncated.png", "zero.jpg", "notes.jpg"}
    assert len(used) == 24

    run = imagerec.train(data, out=tmp_path / "run", epochs=1, batch_size=8, seed=0, **QUIET)
    manifest = (run.path / "manifest.csv").read_text()
    assert "truncated.png" not in manifest and "escape.png" not in manifest and manifest.count("\n") == 25
    assert _tree_hashes(data) == before  # no in-place "repair", nothing added or removed


def test_e27_an_empty_class_or_a_single_class_fails_clearly(tmp_path):
    data = _hostile_folder(tmp_path)
    (data / "purple").mkdir()
    with pytest.raises(DataError, match="class 'purple' has no valid images"):
        imagerec.train(data, out=tmp_path / "run1", epochs=1, **QUIET)
    single = write_colour_dataset(tmp_path / "single", per_class=4, size=16)
    for name in ("green", "blue"):
        for f in (single / name).iterdir():
            f.unlink()
        (single / name).rmdir()
    with pytest.raises(DataError, match="at least 2"):
        imagerec.train(single, out=tmp_path / "run2", epochs=1, **QUIET)


def test_e27_too_many_invalid_files_fail_clearly(tmp_path):
    data = write_colour_dataset(tmp_path / "data", per_class=3, size=16)
    for i in range(12):
        (data / "red" / f"junk_{i}.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match="files are invalid"):
        imagerec.train(data, out=tmp_path / "run", epochs=1, **QUIET)


# E28 -----------------------------------------------------------------------------------------------------
EPOCHS = 6
# deterministic=True: an uninterrupted run is then bit-reproducible (measured), so the killed-and-resumed run can be
# compared with it at a tolerance that reflects the kills, not kernel noise
_CHILD = """
import os, random, signal, sys, threading
from pathlib import Path
data, out, seed, mode = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(seed)
import imagerec, tensorflow  # the kill clock starts once the libraries are loaded (start-up is not the point)
if os.environ.get("TRACE"):  # record the weights each fit starts from and ends each epoch with (sha256)
    import hashlib, json, keras
    trace, real_fit = {"start": None, "epochs": {}}, keras.Model.fit
    def digest(model):
        return hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
    def dump():
        Path(os.environ["TRACE"]).write_text(json.dumps(trace))
    class Trace(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):  # after BackupAndRestore's on_train_begin
            if trace["start"] is None:
                trace["start"] = digest(self.model); dump()
        def on_epoch_end(self, epoch, logs=None):  # first in the list: before the checkpoint is written
            trace["epochs"][str(epoch + 1)] = digest(self.model); dump()
    def fit(self, *args, callbacks=None, **kwargs):
        return real_fit(self, *args, callbacks=[Trace(), *(callbacks or [])], **kwargs)
    keras.Model.fit = fit
if mode.startswith("epoch"):  # kill -9 right after the checkpoint of epoch N is published (backup/latest)
    real_replace, nth = os.replace, int(mode[5:])
    def replace_then_kill(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if str(dst).endswith("latest") and (Path(dst).parent / Path(dst).read_text().strip()).name == f"ckpt-{nth:04d}":
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace_then_kill
if mode == "timer":  # kill -9 at a random instant of the run
    threading.Timer(rng.uniform(0.2, 4.0), os.kill, (os.getpid(), signal.SIGKILL)).start()
if mode in ("replace", "fsync"):  # kill -9 right before or right after the n-th rename / fsync of the run
    real = getattr(os, mode)
    nth, after, calls = rng.randint(1, 12), rng.random() < 0.5, [0]
    def hook(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(os, mode, hook)
resume = (out / "config.json").exists()
imagerec.train(data, out=out, epochs=int(sys.argv[5]), batch_size=8, seed=0, resume=resume, force=not resume,
               deterministic=True, log=lambda *a: None)
print("FINISHED")
"""


def _check_run_invariants(run: Path) -> int:
    """No truncated file at any final path; return the checkpoint epoch (0 when none)."""
    import h5py

    if (run / "model.keras").exists():
        prescan_keras_file(run / "model.keras")
        verify_hash(run / "model.keras")
    for name in ("config.json", "labels.json", "metrics.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())
    pointer = run / "backup" / "latest"
    if not pointer.exists():
        return 0
    ckpt = run / "backup" / pointer.read_text().strip()
    meta = json.loads((ckpt / "meta.json").read_text())
    assert ckpt.name == f"ckpt-{meta['epoch']:04d}", (ckpt.name, meta)
    with h5py.File(ckpt / "model.weights.h5", "r") as fh:
        assert len(fh.keys()) > 0
    return int(meta["epoch"])


def _train_child(
    data: Path, run: Path, seed: int, mode: str, trace: Path | None = None
) -> tuple[subprocess.Popen, str, str]:
    """One ``_CHILD`` process: train (or resume) ``run``; ``mode`` picks where it kills itself (``none``: never,
    ``epochN``: right after epoch N's checkpoint); with ``trace``, weight digests go there (see ``_CHILD``)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "",
        **({"TRACE": str(trace)} if trace else {}),
    }
    args = [sys.executable, "-c", _CHILD, str(data), str(run), str(seed), mode, str(EPOCHS)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    return proc, out, err


def _kill_loop(tmp_path: Path, cycles: int, seed: int) -> list[tuple[str, int, int]]:
    data = write_colour_dataset(tmp_path / "data", per_class=8, size=16, seed=4)
    run = tmp_path / "run"
    rng = random.Random(seed)
    history, last_epoch, kills = [], 0, 0
    for attempt in range(2 * cycles + 1):
        final = kills == cycles or attempt == 2 * cycles
        mode = "none" if final else rng.choice(["timer", "replace", "fsync"])
        proc, out, err = _train_child(data, run, rng.randrange(1 << 30), mode)
        if final:
            assert proc.returncode == 0 and "FINISHED" in out, err[-3000:]
        else:
            assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
        epoch = _check_run_invariants(run)
        assert epoch >= last_epoch, (history, epoch)  # never goes back to an older checkpoint
        last_epoch = epoch
        history.append((mode, epoch, proc.returncode))
        kills += proc.returncode == -signal.SIGKILL
        if final:
            break
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_completed"] == EPOCHS
    assert _check_run_invariants(run) == EPOCHS
    from imagerec import Classifier

    Classifier.load(run)  # loads: hash manifest and model agree
    return history


def _final_metrics(run: Path) -> dict[str, float]:
    """The run's reported final metrics: val and test accuracy of its published (best) model."""
    metrics = json.loads((run / "metrics.json").read_text())
    return {split: metrics[split]["accuracy"] for split in ("val", "test")}


def test_e28_kill_9_at_random_points_always_resumes(tmp_path):
    history = _kill_loop(tmp_path, cycles=5, seed=int(os.environ.get("IMAGEREC_KILL_SEED", 0)))
    assert {mode for mode, _, _ in history[:-1]} & {"replace", "fsync"}, history  # some kills hit a write
    assert sum(rc == -signal.SIGKILL for _, _, rc in history) == 5, history  # the kills really happened

    # the same data, seed and epochs, never interrupted
    proc, out, err = _train_child(tmp_path / "data", tmp_path / "uninterrupted", 0, "none")
    assert proc.returncode == 0 and "FINISHED" in out, err[-3000:]
    resumed, reference = _final_metrics(tmp_path / "run"), _final_metrics(tmp_path / "uninterrupted")
    # Tolerance on val accuracy: none. Measured with kill seeds 0-3 and with a kill forced between the two checkpoint
    # writes: 1.0 vs 1.0 every time. Why exact is honest: with op determinism an uninterrupted run is
    # bit-reproducible (two runs: identical weights) and every epoch before a resume replays bit for bit; the best
    # val accuracy (1.0) is reached in the first epoch here and cannot be beaten. Test accuracy is not compared:
    # among epochs tied at the best val accuracy the lowest val loss is kept (imagerec.training.selection), and after
    # a resume the remaining epochs see a different shuffle/augmentation stream, so the kept epoch may be another
    # one (test accuracy on these 3 images: 1.0 resumed vs 0.67 uninterrupted, seen once). Instead: each run
    # published the epoch that the rule picks from its own history.
    assert resumed["val"] == reference["val"] == 1.0, (resumed, reference)
    for run in (tmp_path / "run", tmp_path / "uninterrupted"):
        history = read_history(run / "history.csv")
        assert json.loads((run / "metrics.json").read_text())["best_epoch"] == best_epoch(history), history


def test_e28_resume_after_a_kill_continues_from_the_checkpoint_not_from_scratch(tmp_path):
    """A kill -9 right after epoch 2's checkpoint, then ``--resume``: the weights training restarts from are
    exactly epoch 2's, and only the remaining epochs run. A resume that ignored the checkpoint (fresh weights, or
    all epochs again) fails here, although its final accuracy would match (see the test above)."""
    data = write_colour_dataset(tmp_path / "data", per_class=8, size=16, seed=4)
    run = tmp_path / "run"
    proc, _, err = _train_child(data, run, 0, "epoch2", trace=tmp_path / "killed.json")
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    assert _check_run_invariants(run) == 2 and not (run / "metrics.json").exists()
    proc, out, err = _train_child(data, run, 0, "none", trace=tmp_path / "resumed.json")
    assert proc.returncode == 0 and "FINISHED" in out, err[-3000:]
    killed = json.loads((tmp_path / "killed.json").read_text())
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert sorted(killed["epochs"]) == ["1", "2"]
    assert resumed["start"] == killed["epochs"]["2"]  # continues from epoch 2's weights...
    assert resumed["start"] not in (killed["start"], killed["epochs"]["1"])  # ...not from scratch or epoch 1
    assert sorted(resumed["epochs"], key=int) == [str(e) for e in range(3, EPOCHS + 1)]  # only the rest
    assert json.loads((run / "metrics.json").read_text())["epochs_completed"] == EPOCHS
    with open(run / "history.csv") as fh:
        assert [int(line.split(",")[0]) for line in fh.readlines()[1:]] == list(range(EPOCHS))


@pytest.mark.slow
def test_e28_kill_9_twenty_times(tmp_path):
    _kill_loop(tmp_path, cycles=20, seed=1)


def test_e28_kill_between_model_write_and_hash_manifest_keeps_a_loadable_model(tmp_path, bounded):
    """The narrowest window: the new model.keras is in place, its manifest not yet (or the reverse)."""
    from imagerec.run import load_model_file

    from .conftest import tiny_model

    path = tmp_path / "run" / "model.keras"
    from imagerec.run import HASH_SUFFIX, save_model_file

    for when in ("first_save", "after_model", "after_manifest_tmp"):
        save_model_file(tiny_model(), path)
        first = verify_hash(path)
        if when == "first_save":  # no model yet: the very first save of a run is killed
            path.unlink()
            Path(str(path) + HASH_SUFFIX).unlink()
        code = f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from security.conftest import tiny_model
        from imagerec.run import save_model_file
        real, calls = os.replace, []
        def hook(src, dst):
            calls.append(dst)
            if {when!r} in ("after_model", "first_save") and str(dst).endswith("model.keras"):
                real(src, dst); os.kill(os.getpid(), signal.SIGKILL)
            if {when!r} == "after_manifest_tmp" and str(dst).endswith(".sha256.json"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        os.replace = hook
        save_model_file(tiny_model(), __import__("pathlib").Path({str(path)!r}))
        """
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert load_model_file(path).name == "tiny", when  # old or new model, but always one that verifies
        assert verify_hash(path) in (first, hashlib.sha256(path.read_bytes()).hexdigest())


# E29 -----------------------------------------------------------------------------------------------------
def test_e29_nan_stops_training_and_keeps_the_last_good_model(tmp_path):
    from imagerec.training.callbacks import TrainingDiverged

    data = write_colour_dataset(tmp_path / "data", per_class=8, size=16, seed=5)
    run = imagerec.train(data, out=tmp_path / "run", epochs=2, batch_size=8, seed=0, **QUIET)
    rd = RunDir(run.path)
    good_hash = verify_hash(rd.model)
    good_pointer = (rd.backup / "latest").read_text()
    with pytest.raises(TrainingDiverged, match="training diverged"):
        imagerec.train(
            data,
            out=run.path,
            epochs=4,
            batch_size=8,
            seed=0,
            resume=True,
            learning_rate=1e30,
            schedule="constant",
            **QUIET,
        )
    assert verify_hash(rd.model) == good_hash
    assert (rd.backup / "latest").read_text() == good_pointer
    model = rd.load_model()
    assert all(np.isfinite(w).all() for w in model.get_weights())


# E30 -----------------------------------------------------------------------------------------------------
def test_e30_same_seed_gives_identical_weights_and_a_different_seed_does_not(tmp_path):
    data = write_colour_dataset(tmp_path / "data", per_class=6, size=16, seed=6)
    hashes, configs = [], []
    for i, seed in enumerate((7, 7, 8)):
        run = imagerec.train(
            data, out=tmp_path / f"run{i}", epochs=1, batch_size=8, seed=seed, deterministic=True, **QUIET
        )
        hashes.append(_weights_hash(RunDir(run.path).load_model()))
        configs.append(json.loads((run.path / "config.json").read_text()))
    assert hashes[0] == hashes[1]
    assert hashes[2] != hashes[0]
    for config in configs:
        assert config["seed"] in (7, 8) and config["data_fingerprint"] and config["versions"]["tensorflow"]
    assert configs[0]["data_fingerprint"] == configs[1]["data_fingerprint"]  # the split is seeded too
