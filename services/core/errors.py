"""Package exception hierarchy (minimal; the lead may extend it).

Every error raised on purpose by monolith_serving derives from MonolithServingError so callers can catch
the package's failures without catching programming errors.
"""

from __future__ import annotations


class MonolithServingError(Exception):
    """Base class of all deliberate monolith_serving errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(MonolithServingError):
    """The input (request, file, config) is malformed."""


class NotFoundError(MonolithServingError):
    """A named model, table, file or key does not exist."""


class UnavailableError(MonolithServingError):
    """A dependency is temporarily unreachable; retrying may help."""


class ResourceExhaustedError(MonolithServingError):
    """A quota, queue or memory limit was hit."""


class FailedPreconditionError(MonolithServingError):
    """The system is not in a state where the operation can run."""


class DeadlineExceededError(MonolithServingError):
    """The caller's deadline passed before the work finished."""
