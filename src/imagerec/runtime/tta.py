"""Flip test-time augmentation: a runtime callable averaged over each image and its mirror image."""

from __future__ import annotations

from typing import Any

import numpy as np

from imagerec.errors import ImagerecError


def trained_with_flips(config: dict[str, Any]) -> bool | None:
    """Whether the run's augmentation mirrored images horizontally (None: not recorded)."""
    from imagerec.data.augment import augment_flips

    preset = ((config.get("config") or {}).get("augment") or {}).get("preset")
    return augment_flips(preset) if isinstance(preset, str) else None


def check_flip_tta(config: dict[str, Any]) -> None:
    """Refuse flip TTA for a run that never saw mirrored images (digits, text: a mirror is another thing)."""
    if trained_with_flips(config) is False:
        preset = config["config"]["augment"]["preset"]
        raise ImagerecError(
            f"--tta averages each image with its mirror image, but this run was trained without flips "
            f"(augmentation {preset!r}), so mirrored images are not what it learned; drop --tta"
        )


class FlipTTA:
    """``batch -> probs`` averaged over the batch and its horizontal mirror (flip test-time augmentation).

    Like fastai's ``Learner.tta`` and Ultralytics' ``augment=True``, reduced to the one view that is exactly
    label-preserving for a run trained with flips. One model call on the stacked ``2N`` images; ``outputs`` also
    averages the two embeddings (re-normalised).
    """

    def __init__(self, run_fn):
        self.run_fn = run_fn

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        from imagerec.runtime import outputs_of

        batch = np.asarray(batch)
        probs, emb = outputs_of(self.run_fn, np.concatenate([batch, batch[:, :, ::-1]]))
        n = len(batch)
        probs = 0.5 * (probs[:n] + probs[n:])
        if emb is not None:
            emb = emb[:n] + emb[n:]
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return probs, emb

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]


def with_flip_tta(run_fn) -> FlipTTA:
    """``run_fn`` (a runtime callable) under flip test-time augmentation (see :class:`FlipTTA`)."""
    return FlipTTA(run_fn)


__all__ = ["FlipTTA", "check_flip_tta", "trained_with_flips", "with_flip_tta"]
