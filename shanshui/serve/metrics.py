"""Prometheus metrics through the standard client library, in a registry of the app's own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class ServeMetrics:
    def __init__(self, painter):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, open fds
        queue_length = Gauge("shanshui_serve_queue_length", "Jobs waiting for the painter", registry=self.registry)
        queue_length.set_function(painter.queue.qsize)
        busy = Gauge("shanshui_serve_busy", "1 while a job is being painted", registry=self.registry)
        busy.set_function(lambda: 1.0 if painter.current is not None else 0.0)
        self.latency = Histogram("shanshui_serve_request_seconds", "Painting requests answered 200, queueing included",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("shanshui_serve_images", "Images painted and returned", registry=self.registry)
        self.rejections = Counter("shanshui_serve_rejections", "Painting requests not answered with images, by reason",
                                  ["reason"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
