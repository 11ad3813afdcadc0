"""``imagerec serve RUN --record DIR``: the service's side of recording (the writer is
:mod:`imagerec.monitoring.records`).

The routes hand ``Service.results`` what they answered on (uploaded files, or decoded pixels for KServe ``FP32``
inputs); :func:`record` turns each answer into an :class:`Observation` and queues it, on the event loop, with no
disk work. With ``--workers N`` each worker process has its own :class:`Recorder` and files (their names carry the
pid). ``/metrics`` reads the recorder at scrape time (:class:`RecordingCollector`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from imagerec.monitoring.records import Observation, Recorder
from imagerec.prediction import split_embedding
from imagerec.settings import RecordSettings, ServeSettings


def recorder_for(settings: ServeSettings, classifier) -> Recorder | None:
    """The recorder of ``--record DIR`` (None without: nothing is recorded, no thread runs)."""
    if not settings.record:
        return None
    return Recorder(
        settings.record, RecordSettings(images=settings.record_images), ood_limit=classifier.ood_threshold
    )


def record(
    service, preds: list, scores: np.ndarray, data: list[bytes] | None, arrays: list[np.ndarray] | None
) -> None:
    """Queue one record per answer of ``preds`` (rows ``scores`` carry the embedding: ``new_batcher`` asks for
    it when recording). ``data``: the uploaded files; ``arrays``: decoded pixels where there is no file."""
    recorder: Recorder = service.recorder
    embeddings = split_embedding(scores, len(service.clf.labels))
    version, runtime = service.model_version or service.clf.version, service.clf.runtime
    for i, pred in enumerate(preds):
        recorder.add(
            Observation(
                pred,
                data[i] if data is not None else None,
                embeddings[i] if embeddings is not None else None,
                version,
                runtime,
                array=arrays[i] if arrays is not None else None,
            )
        )


def info(recorder: Recorder | None) -> dict[str, Any] | None:
    """What ``GET /v1/model`` says about recording (None: not recording)."""
    if recorder is None:
        return None
    return {
        "dir": str(recorder.root),
        "state": recorder.state,
        "images": recorder.settings.images,
        "written": recorder.written,
        "dropped": recorder.dropped,
        **({"error": recorder.error} if recorder.error else {}),
    }


class RecordingCollector:
    """``imagerec_recording`` (1 while recording, 0 when off, stopped or failed) and the records written and
    dropped, read from the service's recorder at scrape time (no work per answer)."""

    def __init__(self, service):
        self.service = service

    def describe(self):
        return list(self.collect())

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        recorder = getattr(self.service, "recorder", None)
        state = recorder.state if recorder is not None else "off"
        yield GaugeMetricFamily(
            "imagerec_recording",
            "1 while --record writes records; 0 when off, stopped or failed (a failed write logs why)",
            value=1 if state == "recording" else 0,
        )
        yield CounterMetricFamily(
            "imagerec_records_written", "Answers recorded", value=recorder.written if recorder else 0
        )
        yield CounterMetricFamily(
            "imagerec_records_dropped",
            "Answers not recorded: recording failed, or the writer fell behind",
            value=recorder.dropped if recorder else 0,
        )


__all__ = ["RecordingCollector", "info", "record", "recorder_for"]
