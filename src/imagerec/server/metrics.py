"""Prometheus metrics of one app, in its own ``CollectorRegistry`` (two apps in one process never collide)."""

from __future__ import annotations

from typing import Any

#: Route templates reported as the ``route`` label; anything else is ``other`` (bounded label values).
ROUTES = (
    "/v1/predict",
    "/v1/model",
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "/v2/health/live",
    "/v2/health/ready",
)


class ServerMetrics:
    """Request counts by route and status, latency, batch sizes, predictions by class, queue depth, model worker
    recycles and stalled workers."""

    def __init__(self, labels: list[str]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "imagerec_http_requests",
            "HTTP requests by route and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "imagerec_http_request_duration_seconds",
            "Time from request start to response end",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "imagerec_batch_size",
            "Images per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.predictions = Counter(
            "imagerec_predictions", "Predicted (top-1) class of each image", ["label"], registry=self.registry
        )
        # labelled children looked up once (``labels()`` takes a lock and sorts its arguments each call)
        self._predicted = {label: self.predictions.labels(label=label) for label in [*labels, "unknown"]}
        self._by_route: dict[tuple[str, int], tuple[Any, Any]] = {}
        self.queue_depth = Gauge(
            "imagerec_queue_depth", "Images waiting for the model", registry=self.registry
        )
        self.recycles = Counter(
            "imagerec_model_worker_recycles",
            "Model workers abandoned after a stalled call and replaced by a fresh one",
            registry=self.registry,
        )
        self.stalled = Gauge(
            "imagerec_model_workers_stalled",
            "Abandoned model workers whose call has still not returned",
            registry=self.registry,
        )

        # the served model (--models DIR: the version; else the model file's hash), and swaps by outcome
        self.model = Gauge(
            "imagerec_model_info",
            "The model being served (one series, value 1)",
            ["version", "name", "runtime"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "imagerec_model_reloads",
            "Version reloads (admin route or --models watcher) by outcome: ok, refused (old model kept)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("ok", "refused"):
            self.reloads.labels(outcome=outcome)

    def set_model(self, version: str, name: str, runtime: str) -> None:
        """Point ``imagerec_model_info`` at the model now served (the previous series is removed)."""
        self.model.clear()
        self.model.labels(version=version, name=name, runtime=runtime).set(1)

    @staticmethod
    def route_of(path: str) -> str:
        if path in ROUTES:
            return path
        if path.startswith("/v2/models/"):
            return "/v2/models/{name}/infer" if path.endswith("/infer") else "/v2/models/{name}"
        if path.startswith("/static/"):
            return "/static"
        return "other"

    def observe(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        route = self.route_of(scope.get("path", ""))
        children = self._by_route.get((route, status))
        if children is None:  # bounded: ROUTES x the status codes the server answers
            children = (
                self.requests.labels(route=route, status=str(status)),
                self.latency.labels(route=route),
            )
            self._by_route[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_prediction(self, label: str) -> None:
        """One more answer ``label`` (a class or ``unknown``)."""
        child = self._predicted.get(label)
        if child is None:
            child = self._predicted[label] = self.predictions.labels(label=label)
        child.inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
