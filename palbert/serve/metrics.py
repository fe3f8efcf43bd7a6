"""The server's Prometheus metrics, ``palbert_`` prefixed, on a registry of their own (two
apps in one process, or tests, never collide)::

    m = Metrics()
    m.requests.labels(task="sst", status="200").inc()
    generate_latest(m.registry)        # what GET /metrics answers

Task labels name loaded tasks only: anything else a client sends is counted as ``_unknown``
(several tasks in one call as ``_multi``), so a client cannot grow the label set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UNKNOWN = "_unknown"
MULTI = "_multi"
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Every collector of one app."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "palbert_requests", "HTTP predict requests by task and status", ["task", "status"],
            registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "palbert_request_duration_seconds", "predict request latency", ["task"],
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "palbert_queue_duration_seconds", "a row's wait in the queue before its forward",
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "palbert_inference_duration_seconds", "one batch's forward pass", buckets=_SECONDS,
            registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "palbert_queue_depth", "rows admitted and not yet computed", registry=r
        )
        self.batch_rows = Histogram(
            "palbert_batch_rows", "rows per batch", buckets=_COUNTS, registry=r
        )
        self.batch_padded_tokens = Histogram(
            "palbert_batch_padded_tokens", "padded tokens (rows x longest row) per batch",
            buckets=tuple(2**k for k in range(4, 16)), registry=r,
        )  # fmt: skip
        self.batch_tasks = Histogram(
            "palbert_batch_tasks", "distinct tasks per batch", buckets=_COUNTS, registry=r
        )
        self.padding_ratio = Histogram(
            "palbert_batch_padding_ratio", "share of a batch's positions that are padding",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0), registry=r,
        )  # fmt: skip
        self.tasks_loaded = Gauge("palbert_tasks_loaded", "tasks being served", registry=r)
        self.task_loads = Counter(
            "palbert_task_loads", "task files loaded (at start and by PUT)", ["task"], registry=r
        )
        self.load_failures = Counter(
            "palbert_task_load_failures", "task files that failed to load", registry=r
        )
        self.load_seconds = Histogram(
            "palbert_task_load_duration_seconds", "time to load a task file (or fail to)",
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            "palbert_rejections", "requests refused before compute, by reason", ["reason"],
            registry=r,
        )  # fmt: skip
        self.dropped_rows = Counter(
            "palbert_dropped_rows", "rows of clients that left, dropped before compute",
            registry=r,
        )  # fmt: skip

    def observe(self, event: str, v: dict) -> None:
        """What the batcher reports (:class:`palbert.serve.batcher.Batcher` ``observe``)."""
        if event == "depth":
            self.queue_depth.set(v["value"])
        elif event == "dropped":
            self.dropped_rows.inc(v["rows"])
        elif event == "batch":
            self.batch_rows.observe(v["rows"])
            self.batch_padded_tokens.observe(v["padded_tokens"])
            self.batch_tasks.observe(v["tasks"])
            self.padding_ratio.observe(v["padding_ratio"])
            self.inference_seconds.observe(v["seconds"])
            for q in v["queued"]:
                self.queue_seconds.observe(q)


__all__ = ["MULTI", "UNKNOWN", "Metrics"]
