"""`GET /metrics` of lora-serve, in the Prometheus text format (prometheus_client).

Counters and histograms are updated as requests run; the scheduler's and the registry's state (queue length,
running rows, KV tokens, resident adapters, adapter loads and evictions) is read when Prometheus scrapes. Each
server gets its own CollectorRegistry, so two servers in one process never share series. The `model` label is
only ever a name the server knows (the base, or a registered adapter); anything else counts under `unknown`, so
random names in requests cannot grow the number of series.
"""

from __future__ import annotations

import time

UNKNOWN = "unknown"
# Seconds. CPU decoding of a 6B model takes ~0.1-1 s per token; a tiny one a few milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServeMetrics:
    def __init__(self, host, batcher):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.host, self.batcher = host, batcher
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("lora_serve_requests", "HTTP requests answered, by model and status code",
                                ["model", "status"], registry=self.registry)
        self.tokens = Counter("lora_serve_generated_tokens", "Tokens generated, by model", ["model"],
                              registry=self.registry)
        self.ttft = Histogram("lora_serve_time_to_first_token_seconds",
                              "From a row's arrival to its first generated token", ["model"],
                              buckets=LATENCY_BUCKETS, registry=self.registry)
        self.itl = Histogram("lora_serve_inter_token_latency_seconds", "Between two generated tokens of one row",
                             ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_StateCollector(host, batcher))

    def label(self, name) -> str:
        """The model label for a requested name: a known name, or `unknown`."""
        if not isinstance(name, str):
            return UNKNOWN
        if self.host.is_base(name):
            return self.host.base_name
        return name if self.host.is_known(name) else UNKNOWN

    def count(self, name, status: int) -> None:
        self.requests.labels(self.label(name), str(status)).inc()

    def on_token(self, name: str):
        """A GenRequest.on_token callback for one row: time to first token, then the gaps between tokens."""
        model = self.label(name)
        tokens, ttft, itl = self.tokens.labels(model), self.ttft.labels(model), self.itl.labels(model)
        last = [time.monotonic(), True]

        def tick() -> None:
            now = time.monotonic()
            (ttft if last[1] else itl).observe(now - last[0])
            last[0], last[1] = now, False
            tokens.inc()
        return tick

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StateCollector:
    """Gauges and counters read from the scheduler and the adapter registry at scrape time."""

    def __init__(self, host, batcher):
        self.host, self.batcher = host, batcher

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        b, h = self.batcher, self.host
        yield GaugeMetricFamily("lora_serve_queue_length", "Requests waiting to start", value=b.queued())
        yield GaugeMetricFamily("lora_serve_running_rows", "Rows being generated now", value=b.running())
        yield GaugeMetricFamily("lora_serve_kv_tokens", "KV cache tokens held by the running rows (padding included)",
                                value=b.kv_tokens())
        yield GaugeMetricFamily("lora_serve_resident_adapters", "Adapters loaded in memory", value=len(h.resident()))
        yield CounterMetricFamily("lora_serve_adapter_loads", "Adapters loaded onto the base", value=h.loads)
        yield CounterMetricFamily("lora_serve_adapter_evictions",
                                  "Adapters unloaded to make room for another (least recently used)",
                                  value=h.evictions)

    def describe(self):
        return []
