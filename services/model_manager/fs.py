"""The few file-system operations the model manager needs, for local disks and (through fsspec) remote stores.

Sources (export bases, p2p folders) may live on any file system fsspec knows (``hdfs://``, ``s3://``,
``gs://``, ``memory://``); the receive folder replicas load from is always local. Paths are plain strings in
the file system's own syntax. ``open_filesystem(url)`` chooses the implementation once, at start-up.
"""

from __future__ import annotations

import abc
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from monolith_serving.core.errors import FailedPreconditionError


@dataclass(frozen=True)
class FileInfo:
    """One directory entry. ``mtime`` is seconds since the epoch (0.0 when the store does not say)."""

    name: str  # last path component
    path: str  # full path in the file system's syntax
    is_dir: bool
    size: int
    mtime: float


class FileSystem(abc.ABC):
    """Blocking file operations (call them on an executor from async code). Missing paths are not errors
    for ``ls`` (it returns ``[]``) and ``rm`` (it does nothing)."""

    @abc.abstractmethod
    def ls(self, path: str) -> list[FileInfo]:
        """Children of a directory, sorted by name; ``[]`` if it is missing or not a directory."""

    @abc.abstractmethod
    def exists(self, path: str) -> bool: ...

    @abc.abstractmethod
    def read_text(self, path: str) -> str: ...

    @abc.abstractmethod
    def write_text(self, path: str, text: str) -> None:
        """Create or replace a small file (parents created)."""

    @abc.abstractmethod
    def open_read(self, path: str) -> BinaryIO: ...

    @abc.abstractmethod
    def rm(self, path: str) -> None:
        """Remove a file, or a directory with everything in it."""

    def join(self, *parts: str) -> str:
        return "/".join(p.rstrip("/") if i == 0 else p.strip("/") for i, p in enumerate(parts))

    def walk_files(self, path: str) -> list[FileInfo]:
        """Every file below ``path`` (depth first, sorted), with ``name`` relative to ``path``."""
        found: list[FileInfo] = []
        stack = [("", path)]
        while stack:
            prefix, current = stack.pop()
            for info in reversed(self.ls(current)):
                rel = f"{prefix}{info.name}"
                if info.is_dir:
                    stack.append((rel + "/", info.path))
                else:
                    found.append(FileInfo(rel, info.path, False, info.size, info.mtime))
        return sorted(found, key=lambda f: f.name)


class LocalFileSystem(FileSystem):
    def ls(self, path: str) -> list[FileInfo]:
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        infos = []
        for entry in entries:
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue  # removed while listing
            infos.append(FileInfo(entry.name, entry.path, entry.is_dir(), stat.st_size, stat.st_mtime))
        return sorted(infos, key=lambda i: i.name)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def read_text(self, path: str) -> str:
        return Path(path).read_text()

    def write_text(self, path: str, text: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)

    def open_read(self, path: str) -> BinaryIO:
        return open(path, "rb")

    def rm(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=False)
        elif os.path.lexists(path):
            os.unlink(path)


class FsspecFileSystem(FileSystem):
    """Any fsspec file system (``memory://``, ``hdfs://``, ``s3://`` ...). Needs ``monolith-serving[remote]``."""

    def __init__(self, fs: Any) -> None:
        self._fs = fs

    @staticmethod
    def _mtime(info: dict[str, Any]) -> float:
        for key in ("mtime", "LastModified", "last_modified", "created", "updated"):
            value = info.get(key)
            if value is None:
                continue
            if hasattr(value, "timestamp"):
                return float(value.timestamp())
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
        return 0.0

    def ls(self, path: str) -> list[FileInfo]:
        try:
            if not self._fs.isdir(path):
                return []
            raw = self._fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        infos = []
        for item in raw:
            full = str(item["name"]).rstrip("/")
            name = full.rsplit("/", 1)[-1]
            infos.append(
                FileInfo(name, full, item.get("type") == "directory", int(item.get("size") or 0), self._mtime(item))
            )
        return sorted(infos, key=lambda i: i.name)

    def exists(self, path: str) -> bool:
        return bool(self._fs.exists(path))

    def read_text(self, path: str) -> str:
        return cast(str, self._fs.cat_file(path).decode())

    def write_text(self, path: str, text: str) -> None:
        self._fs.pipe_file(path, text.encode())

    def open_read(self, path: str) -> BinaryIO:
        return cast(BinaryIO, self._fs.open(path, "rb"))

    def rm(self, path: str) -> None:
        if self._fs.exists(path):
            self._fs.rm(path, recursive=True)


def open_filesystem(url: str) -> tuple[FileSystem, str]:
    """The file system of ``url`` and the path inside it: plain paths and ``file://`` are local, any other
    scheme goes through fsspec (a FailedPreconditionError names the extra to install when it is missing)."""
    if "://" not in url:
        return LocalFileSystem(), url
    scheme, _, rest = url.partition("://")
    if scheme == "file":
        return LocalFileSystem(), "/" + rest.lstrip("/")
    try:
        import fsspec
    except ImportError as error:
        raise FailedPreconditionError(f"{url!r} needs fsspec: pip install 'monolith-serving[remote]'") from error
    fs, path = fsspec.core.url_to_fs(url)
    if scheme == "memory" and not str(path).startswith("/"):
        path = "/" + str(path)
    return FsspecFileSystem(fs), str(path)
