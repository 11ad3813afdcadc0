"""The rules of a run directory at the start of training: overwrite (``--force``) and resume (``--resume``)."""

from __future__ import annotations

from typing import Any

from imagerec.errors import RunError
from imagerec.run import RunDir
from imagerec.settings import RunConfig

#: Settings a resumed run must share with its checkpoint; everything else (epochs, learning rate...) may change.
MUST_MATCH = (("model", "name"), ("data", "image_size"), ("data", "channels"), ("data", "resize"))


def prepare_run_dir(run: RunDir, resume: bool, force: bool) -> dict[str, Any] | None:
    """Check the overwrite rules (clearing the run with ``force``); return the previous config on resume."""
    if resume:
        if not run.config.exists():
            raise RunError(f"nothing to resume in {str(run.path)!r} (no config.json); train without --resume")
        return run.read_config()
    if run.exists():
        if not force:
            raise RunError(
                f"run {str(run.path)!r} already exists; pass --resume to continue it or --force to replace it"
            )
        run.clear()
    return None


def check_resume(previous: dict[str, Any], config: RunConfig, class_names: list[str]) -> list[str]:
    """Raise when a must-match setting differs; return lines describing the settings that changed."""
    old = RunConfig.from_dict(previous["config"]).to_dict()
    new = config.to_dict()
    for section, name in MUST_MATCH:
        if new[section][name] is not None and new[section][name] != old[section][name]:
            raise RunError(
                f"cannot resume: {section}.{name} is {new[section][name]!r} but the checkpoint was trained with "
                f"{old[section][name]!r}; start a new run with --out"
            )
    if previous.get("class_names") != class_names:
        raise RunError("cannot resume: the dataset's classes differ from the checkpoint's")
    task = previous.get("task", "multiclass")  # runs from before multi-label have none
    if config.model.task != task:
        raise RunError(
            f"cannot resume: the run is {task} but the data makes it {config.model.task}; start a new run with --out"
        )
    changed = []
    for section in new:
        for name, value in new[section].items():
            if (section, name) == ("model", "task"):
                continue  # checked above (an older run's config says "auto")
            if value is not None and value != old[section][name]:
                changed.append(f"{section}.{name}: {old[section][name]!r} -> {value!r}")
    return changed
