"""What one entry version answers: its named outputs, each a group of columns of the dense network's answer.

Without ``outputs`` in the serving spec there is one output, ``output_name``, holding the whole [batch, k]
matrix; with it, the matrix is cut, in order, into the named heads (``serving_spec.OutputSpec``). The cut takes
views of the matrix (no copies), and a single-output version answers the matrix itself: its hot path is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from monolith_serving.core.errors import FailedPreconditionError, InvalidArgumentError
from monolith_serving.core.serving_spec import SPEC_FILE, ServingSpec
from monolith_serving.entry.dense import Float32Array


@dataclass(frozen=True)
class OutputColumns:
    name: str
    start: int
    stop: int  # -1: every column (the one output of a version without heads)

    @property
    def width(self) -> int:
        return self.stop - self.start if self.stop >= 0 else -1


@dataclass(frozen=True)
class EntryOutputs:
    """Immutable, so requests on any thread may share it."""

    columns: tuple[OutputColumns, ...]
    split: bool  # False: one output, the network's whole answer

    @classmethod
    def of(cls, spec: ServingSpec) -> EntryOutputs:
        if not spec.outputs:
            return cls((OutputColumns(spec.output_name, 0, -1),), split=False)
        columns = []
        start = 0
        for output in spec.outputs:
            columns.append(OutputColumns(output.name, start, start + output.width))
            start += output.width
        return cls(tuple(columns), split=True)

    @property
    def total_width(self) -> int:
        """Columns the network must answer; -1 when any number will do (one output)."""
        return self.columns[-1].stop

    def check_network(self, output_width: int, where: str) -> None:
        """Refuses a network whose (known, non-negative) answer width is not the heads' widths summed."""
        if self.split and output_width >= 0 and output_width != self.total_width:
            raise InvalidArgumentError(
                f"{where}/{SPEC_FILE}: 'outputs' widths sum to {self.total_width} but the dense network answers "
                f"{output_width} columns"
            )

    def select(self, output_filter: Sequence[str]) -> tuple[OutputColumns, ...]:
        """The outputs a request asks for (``output_filter``; empty: all), in the spec's order."""
        if not output_filter:
            return self.columns
        wanted = set(output_filter)
        chosen = tuple(c for c in self.columns if c.name in wanted)
        if len(chosen) != len(wanted):
            names = [c.name for c in self.columns]
            unknown = sorted(wanted.difference(names))
            raise InvalidArgumentError(
                f"output_filter names unknown output(s) {unknown}; the outputs are {', '.join(names)}"
            )
        return chosen

    def answer(self, scores: Float32Array, chosen: tuple[OutputColumns, ...]) -> dict[str, Float32Array]:
        """Output name -> [batch, width] (views of ``scores``)."""
        if not self.split:
            return {chosen[0].name: scores}
        if scores.ndim != 2 or scores.shape[1] != self.total_width:
            # A remote network's width is known only from its answer: an export whose dense_0 does not match.
            raise FailedPreconditionError(
                f"the dense network answered shape {list(scores.shape)} but {SPEC_FILE} 'outputs' widths sum to "
                f"{self.total_width}"
            )
        return {c.name: scores[:, c.start : c.stop] for c in chosen}
