"""``imagerec video RUN --source SRC --record DIR``: one record per classified frame (source ``video``).

The record format and the writer thread are :mod:`imagerec.monitoring.records` (as for ``serve --record``): the
frame's answer, OOD score and embedding (the stream asks the model for it only when recording:
``VideoConfig.embeddings``); the frame itself (the region classified, as PNG) only when it is worth reviewing.

Example:
    >>> with FrameRecording(clf, "recorded/", roi=None) as record:          # doctest: +SKIP
    ...     run_video(clf, "clip.mp4", config=VideoConfig(embeddings=True), on_frame=record)
"""

from __future__ import annotations

import os
from typing import Any

from imagerec.monitoring.records import Observation, Recorder
from imagerec.prediction import split_embedding
from imagerec.settings import RecordSettings
from imagerec.video.config import FrameResult


class FrameRecording:
    """An ``on_frame`` callback of :func:`imagerec.video.output.run_video` that records each classified frame."""

    def __init__(
        self,
        classifier,
        root: str | os.PathLike,
        images: str = RecordSettings.images,
        roi: tuple[int, int, int, int] | None = None,
    ):
        self.num_classes = len(classifier.labels)
        self.version, self.runtime = classifier.version, classifier.runtime
        self.roi = roi
        self.recorder = Recorder(
            root, RecordSettings(images=images), ood_limit=classifier.ood_threshold
        ).start()  # an unwritable DIR logs one line and records nothing; the video goes on

    def __call__(self, result: FrameResult) -> None:
        if not result.classified or result.scores is None:
            return
        embedding = split_embedding(result.scores[None], self.num_classes)
        image = result.image
        if image is not None and self.roi is not None:
            x, y, w, h = self.roi
            image = image[y : y + h, x : x + w]
        self.recorder.add(
            Observation(
                result,  # label, confidence, top_k, ood_score, reason, labels: as a Prediction
                None,
                embedding[0] if embedding is not None else None,
                self.version,
                self.runtime,
                source="video",
                array=image[..., ::-1] if image is not None and image.ndim == 3 else image,  # BGR -> RGB
            )
        )

    def close(self) -> None:
        """Write what is queued and stop the writer thread."""
        self.recorder.stop()

    def __enter__(self) -> FrameRecording:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["FrameRecording"]
