"""The Prometheus metrics of DESIGN.md. Labels are bounded: never a SKU or an order id."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """Every syncd series, registered on one registry (the default one in production)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else REGISTRY
        self.registry = r
        self.events = Counter(
            "syncd_events", "Inbound events by connector, type and outcome",
            ["connector", "type", "outcome"], registry=r,
        )
        self.batch_apply = Histogram(
            "syncd_batch_apply_seconds", "Time to apply and commit one engine batch",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
            registry=r,
        )
        self.batch_size = Histogram(
            "syncd_batch_events", "Events per engine batch",
            buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000), registry=r,
        )
        self.push = Counter(
            "syncd_push", "Pushed quantities by channel and outcome", ["channel", "outcome"],
            registry=r,
        )
        self.push_lag = Histogram(
            "syncd_push_lag_seconds", "From commit to the channel acknowledging the push",
            ["channel"], buckets=_LATENCY, registry=r,
        )
        self.outbox_pending = Gauge(
            "syncd_outbox_pending", "Quantities waiting to be pushed", ["channel"], registry=r
        )
        self.coalesced = Counter(
            "syncd_outbox_coalesced", "Desired quantities replaced before they were pushed",
            ["channel"], registry=r,
        )
        self.holds = Gauge("syncd_holds", "Click-and-collect holds by state", ["state"], registry=r)
        self.holds_expired = Counter(
            "syncd_holds_expired", "Holds that reached their TTL", registry=r
        )
        self.oversold = Gauge(
            "syncd_oversold_skus", "SKU-locations whose on-hand is below zero", registry=r
        )
        self.drift = Counter(
            "syncd_drift_corrections", "Channel quantities found different from the pushed ones",
            ["channel"], registry=r,
        )
        self.connector_up = Gauge(
            "syncd_connector_up", "1 while the connector is connected", ["connector"], registry=r
        )
        self.dead_letters = Counter(
            "syncd_dead_letters", "Malformed inbound messages set aside", ["connector"],
            registry=r,
        )
        self.db_errors = Counter(
            "syncd_db_errors", "Failed database commits (nothing was acknowledged)", registry=r
        )
        self.db_up = Gauge("syncd_db_up", "1 while the last commit succeeded", registry=r)
        self.queue_depth = Gauge(
            "syncd_ingest_queue", "Deliveries waiting in the ingest queue", registry=r
        )
        self.levels_lagging = Gauge(
            "syncd_levels_lagging",
            "Level rows behind the ledger (a start after a crash re-applies their events)",
            registry=r,
        )
