"""The admin token that guards state-changing calls (the proxy's ``HandleReloadConfigRequest``, the model
manager's ``POST /rollback``).

The token is read once at start-up from ``--admin_token_file`` (a file keeps it out of ``ps`` and shell history;
in Kubernetes, a mounted Secret), and a presented token is compared in constant time. Pure functions, no state:
safe from any thread.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from monolith_serving.core.errors import InvalidArgumentError

BEARER = "bearer "


def read_token_file(path: str | Path) -> str:
    """The token in ``path`` with surrounding whitespace (a trailing newline) stripped.

    Raises InvalidArgumentError when the file cannot be read or holds only whitespace: a guard configured with an
    empty token is a deployment mistake, refused at start-up rather than discovered at the first call."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgumentError(f"cannot read the admin token file {str(path)!r}: {error}") from error
    if not token:
        raise InvalidArgumentError(f"the admin token file {str(path)!r} is empty")
    return token


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive); None when absent, empty
    or another scheme."""
    if authorization is None or authorization[: len(BEARER)].lower() != BEARER:
        return None
    return authorization[len(BEARER) :].strip() or None


def token_matches(presented: str | None, expected: str) -> bool:
    """Whether ``presented`` is ``expected``, compared in constant time (``hmac.compare_digest`` over UTF-8)."""
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())
