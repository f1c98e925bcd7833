"""Prometheus metrics of ``youri serve`` (``GET /metrics``), one registry per server (``prometheus_client``).

Requests by endpoint and status, prompt and completion tokens, time to first token and inter-token
latency (histograms, seconds), queue length and batch size (read at scrape time), prefix-cache lookups and hits.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, engine):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("youri_requests", "HTTP requests answered", ["endpoint", "status"], registry=registry)
        self.prompt_tokens = Counter("youri_prompt_tokens", "Prompt tokens of generation requests", registry=registry)
        self.completion_tokens = Counter("youri_completion_tokens", "Tokens generated", registry=registry)
        self.ttft = Histogram(
            "youri_time_to_first_token_seconds", "Submit to first text", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.itl = Histogram(
            "youri_inter_token_latency_seconds",
            "Time between a choice's text deltas, per token",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        queue = Gauge("youri_queue_length", "Requests waiting for a batch slot", registry=registry)
        queue.set_function(lambda: len(engine._waiting))
        batch = Gauge("youri_batch_size", "Requests in the running batch", registry=registry)
        batch.set_function(lambda: len(engine.active))
        cache = getattr(engine, "prefix_cache", None)
        lookups = Gauge("youri_prefix_cache_queries", "Prefix-cache lookups", registry=registry)
        lookups.set_function(lambda: cache.stats["queries"] if cache else 0)
        hits = Gauge("youri_prefix_cache_hits", "Prefix-cache lookups that reused cached tokens", registry=registry)
        hits.set_function(lambda: cache.stats["hits"] if cache else 0)
        hit_tokens = Gauge("youri_prefix_cache_hit_tokens", "Prompt tokens not recomputed", registry=registry)
        hit_tokens.set_function(lambda: cache.stats["hit_tokens"] if cache else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
