"""Every Prometheus metric of the PS, on the registry the caller passes (never the global default)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monolith_serving.core.metric_children import LabelledChildren

_LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_LOAD_BUCKETS_S = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class PsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.lookup_requests = Counter(
            "monolith_ps_lookup_requests_total", "Lookup requests answered", ["model"], registry=registry
        )
        self.lookup_fids = Counter(
            "monolith_ps_lookup_fids_total", "Fids looked up", ["model", "table"], registry=registry
        )
        self.lookup_missing_fids = Counter(
            "monolith_ps_lookup_missing_fids_total",
            "Fids looked up that the table does not hold (answered with zeros)",
            ["model", "table"],
            registry=registry,
        )
        self.request_latency = Histogram(
            "monolith_ps_request_latency_seconds",
            "Predict handling time inside the server, by signature",
            ["signature"],
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.request_errors = Counter(
            "monolith_ps_request_errors_total",
            "Predict requests refused, by signature and gRPC code",
            ["signature", "code"],
            registry=registry,
        )
        self.table_rows = Gauge(
            "monolith_ps_table_rows", "Rows per loaded table version", ["model", "version", "table"], registry=registry
        )
        self.table_bytes = Gauge(
            "monolith_ps_table_bytes",
            "Resident bytes per loaded table version (rows + index)",
            ["model", "version", "table"],
            registry=registry,
        )
        self.sync_updates_applied = Counter(
            "monolith_ps_sync_updates_applied_total",
            "Rows upserted by parameter sync",
            ["model", "signature"],
            registry=registry,
        )
        self.sync_updates_rejected = Counter(
            "monolith_ps_sync_updates_rejected_total",
            "Rows of parameter-sync requests refused (the whole request is refused)",
            ["model", "signature"],
            registry=registry,
        )
        self.sync_rows_not_replayed = Counter(
            "monolith_ps_sync_rows_not_replayed_total",
            "Pushed rows applied to the serving version but not replayed into a loading one: its queue outgrew "
            "--max_pending_sync_bytes",
            ["model"],
            registry=registry,
        )
        self.load_duration = Histogram(
            "monolith_ps_load_duration_seconds",
            "Time to load one sub-model version",
            ["model"],
            buckets=_LOAD_BUCKETS_S,
            registry=registry,
        )
        self.load_failures = Counter(
            "monolith_ps_load_failures_total", "Version loads that ended in error", ["model"], registry=registry
        )
        self.version_state = Gauge(
            "monolith_ps_model_version_state",
            "ModelVersionStatus.State of each known version (30 = AVAILABLE)",
            ["model", "version"],
            registry=registry,
        )
        self.loop_step_failures = Counter(
            "monolith_ps_poll_step_failures_total",
            "Failed steps of the config/file-system poll loop",
            ["step"],
            registry=registry,
        )
        # The per-request series labelled by model, resolved once per label combination (a lookup would otherwise
        # make three or more labels() calls, each a lock and a tuple hash) and kept here, where ``forget_model``
        # finds every one of them. Write these series only through these.
        self.lookup_requests_of = LabelledChildren(self.lookup_requests)
        self.lookup_fids_of = LabelledChildren(self.lookup_fids)
        self.lookup_missing_fids_of = LabelledChildren(self.lookup_missing_fids)
        self.sync_updates_applied_of = LabelledChildren(self.sync_updates_applied)
        self.sync_updates_rejected_of = LabelledChildren(self.sync_updates_rejected)
        self.sync_rows_not_replayed_of = LabelledChildren(self.sync_rows_not_replayed)

    def forget_version(self, model: str, version: int, tables: list[str]) -> None:
        for table in tables:
            for gauge in (self.table_rows, self.table_bytes):
                with contextlib.suppress(KeyError):  # never set: the version had no such table
                    gauge.remove(model, str(version), table)

    def forget_model(self, model: str) -> None:
        """Removes every series labelled with ``model`` once it has left the config. Its versions' series went
        as they were unloaded (``forget_version``, the lifecycle's state gauge), its ``load_failures`` with the
        lifecycle. A model added again later counts from fresh series.

        Runs on the event loop, as every request that writes these series does, and a request for a model not
        hosted is refused before it counts anything, so no request in flight can write a series back."""
        for children in (
            self.lookup_requests_of,
            self.lookup_fids_of,
            self.lookup_missing_fids_of,
            self.sync_updates_applied_of,
            self.sync_updates_rejected_of,
            self.sync_rows_not_replayed_of,
        ):
            children.forget(model)
        with contextlib.suppress(KeyError):  # never loaded a version
            self.load_duration.remove(model)
