"""Labelled Prometheus children resolved once per label combination.

prometheus-client's ``metric.labels(...)`` takes a lock and rebuilds the label tuple on every call, a
measurable share of the CPU of a request that does little else; request paths index one of these instead
(label values are few: models, tables, methods, codes).
"""

from __future__ import annotations

from typing import Any


class LabelledChildren(dict[tuple[str, ...], Any]):
    """``children[(value, ...)]`` is ``metric.labels(value, ...)``, looked up once and kept."""

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self._metric = metric

    def __missing__(self, values: tuple[str, ...]) -> Any:
        child = self[values] = self._metric.labels(*values)
        return child
