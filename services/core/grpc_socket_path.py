"""tensorflow_model_server's ``--grpc_socket_path``: the UNIX domain socket a gRPC server listens on besides its port.

gRPC itself checks little here: binding ``unix:PATH`` unlinks any socket file already at ``PATH``, even one a live
server listens on (that server keeps running, unreachable), and a path longer than ``sun_path`` or in a missing
directory fails with a generic "Failed to bind". So the path is checked before binding (``check_socket_path``, at
start-up, so a bad one is exit 2 naming the flag), a socket left by a dead server is removed just before binding
(``claim_socket_path``), and the server removes its own socket file when it stops (``remove_bound_socket``).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from monolith_serving.core.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

SOCKET_PATH_FLAG = "--grpc_socket_path"
# Linux's struct sockaddr_un has a 108-byte sun_path, its terminating NUL included.
MAX_SOCKET_PATH_BYTES = 107
# How long a connect to an existing socket file may take to tell whether a server listens there.
_PROBE_TIMEOUT_S = 1.0


class SocketPathState(str, Enum):
    FREE = "free"  # nothing at the path
    STALE = "stale"  # a socket file nobody listens on: what a killed server leaves behind


def check_socket_path(path: Path) -> SocketPathState:
    """Whether ``path`` can be listened on: FREE or STALE (a socket file that refuses connections).

    InvalidArgumentError naming the flag when it cannot: too long for ``sun_path``, its directory missing, a file
    that is not a socket there (never deleted), or a socket a server listens on."""
    text = str(path)
    encoded = os.fsencode(text)
    if b"\0" in encoded:
        raise InvalidArgumentError(f"{SOCKET_PATH_FLAG} {text!r}: a path cannot hold a NUL byte")
    if len(encoded) > MAX_SOCKET_PATH_BYTES:
        raise InvalidArgumentError(
            f"{SOCKET_PATH_FLAG} {text!r} is {len(encoded)} bytes long; a UNIX socket path holds at most "
            f"{MAX_SOCKET_PATH_BYTES} (sun_path is {MAX_SOCKET_PATH_BYTES + 1} bytes with its terminating NUL): "
            f"use a shorter path"
        )
    directory = path.parent
    if not directory.is_dir():
        raise InvalidArgumentError(
            f"{SOCKET_PATH_FLAG} {text!r}: the directory {str(directory)!r} does not exist (or is not a directory)"
        )
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return SocketPathState.FREE
    except OSError as error:
        raise InvalidArgumentError(f"{SOCKET_PATH_FLAG} {text!r}: cannot look at it: {error.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise InvalidArgumentError(
            f"{SOCKET_PATH_FLAG} {text!r} exists and is not a socket; refusing to delete it: remove it or name "
            f"another path"
        )
    return _probe(path)


def _probe(path: Path) -> SocketPathState:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT_S)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return SocketPathState.STALE
        except FileNotFoundError:  # removed since the lstat
            return SocketPathState.FREE
        except (TimeoutError, BlockingIOError):
            # A listener whose backlog is full: someone listens.
            pass
        except OSError as error:
            raise InvalidArgumentError(
                f"{SOCKET_PATH_FLAG} {str(path)!r}: cannot tell whether a server listens on this socket: "
                f"{error.strerror or errno.errorcode.get(error.errno or 0, error)}"
            ) from None
    raise InvalidArgumentError(
        f"{SOCKET_PATH_FLAG} {str(path)!r}: a server is listening on this socket already; stop it or name another path"
    )


def claim_socket_path(path: Path) -> None:
    """``check_socket_path``, then removes a stale socket file (logged) so that the bind that follows cannot fail on
    it. Raises what the check raises."""
    if check_socket_path(path) is SocketPathState.STALE:
        logger.warning("%s %s: removing the socket file left by a server that is gone", SOCKET_PATH_FLAG, path)
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class BoundSocket:
    """The socket file a server bound, as it was right after the bind: only that file is removed at stop, not one
    that replaced it meanwhile."""

    path: Path
    device: int
    inode: int


def bound_socket(path: Path) -> BoundSocket:
    """The file at ``path``, just bound."""
    status = os.lstat(path)
    return BoundSocket(path=path, device=status.st_dev, inode=status.st_ino)


def remove_bound_socket(bound: BoundSocket) -> None:
    """Removes ``bound``'s socket file if it is still there (gRPC's own shutdown may have removed it already)."""
    try:
        status = os.lstat(bound.path)
    except FileNotFoundError:
        return
    if (status.st_dev, status.st_ino) != (bound.device, bound.inode):
        return
    try:
        bound.path.unlink(missing_ok=True)
    except OSError as error:
        logger.warning("cannot remove the socket file %s: %s", bound.path, error.strerror)
