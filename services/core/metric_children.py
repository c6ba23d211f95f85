"""Labelled Prometheus children resolved once per label combination.

prometheus-client's ``metric.labels(...)`` takes a lock and rebuilds the label tuple on every call, a
measurable share of the CPU of a request that does little else; request paths index one of these instead
(label values are few: models, tables, methods, codes).
"""

from __future__ import annotations

import contextlib
from typing import Any


class LabelledChildren(dict[tuple[str, ...], Any]):
    """``children[(value, ...)]`` is ``metric.labels(value, ...)``, looked up once and kept until ``forget``.

    A series of a metric written through one of these must be removed only by its ``forget``: a child removed
    from the metric behind its back stays cached here, and what is counted on it no longer reaches /metrics.
    """

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self._metric = metric

    def __missing__(self, values: tuple[str, ...]) -> Any:
        child = self[values] = self._metric.labels(*values)
        return child

    def forget(self, first: str) -> None:
        """Removes every series whose first label value is ``first`` from the metric and from this cache; the
        next ``children[(first, ...)]`` creates a fresh series from zero. Not thread-safe: call it where the
        children are used (the event loop)."""
        for values in [values for values in self if values[0] == first]:
            del self[values]
            with contextlib.suppress(KeyError):  # older prometheus-client raises for a series it does not hold
                self._metric.remove(*values)
