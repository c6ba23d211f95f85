"""The few file-system operations the model manager needs, for local disks and (through fsspec) remote stores.

Sources (export bases, p2p folders) may live on any file system fsspec knows (``hdfs://``, ``s3://``,
``gs://``, ``memory://``); the receive folder replicas load from is always local. Paths are plain strings in
the file system's own syntax. ``open_filesystem(url)`` chooses the implementation once, at start-up.

Whoever can write into a source must not reach outside it: local listings never follow symbolic links (a
path handed to ``ls`` may itself be one, e.g. an operator's mounted base path; nothing listed below it is
followed), and ``walk_files`` lists an entry it must not descend into (a link, a name with an empty, ``.``
or ``..`` segment, which object-store keys may hold) as it is, for ``check_entries`` to refuse.
"""

from __future__ import annotations

import abc
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from monolith_serving.core.errors import FailedPreconditionError, InvalidArgumentError


@dataclass(frozen=True)
class FileInfo:
    """One directory entry. ``mtime`` is seconds since the epoch (0.0 when the store does not say)."""

    name: str  # relative to the listed folder, as the store spells it (``walk_files``: to the walked folder)
    path: str  # full path in the file system's syntax
    is_dir: bool
    size: int
    mtime: float
    is_link: bool = False  # a symbolic link (never followed)
    is_special: bool = False  # neither a regular file, a folder nor a link: a FIFO, socket or device


class UnsafeEntryError(InvalidArgumentError):
    """A source lists an entry that must be neither copied nor served: a name that could lead out of its
    folder, a symbolic link, or a special file."""


def unsafe_reason(info: FileInfo) -> str | None:
    """Why the ``walk_files`` entry ``info`` must not be copied or served, or None when it is a plain file."""
    if info.is_link:
        return "a symbolic link (links inside a version are never followed)"
    if info.is_special:
        return "not a regular file (a FIFO, socket or device)"
    if info.name.startswith("/"):
        return "an absolute path"
    if any(part in ("", ".", "..") for part in info.name.split("/")):
        return "a path with an empty, '.' or '..' segment"
    if "\x00" in info.name:
        return "a path with a NUL byte"
    if info.is_dir:
        return "a folder that cannot be listed safely"
    return None


def check_entries(files: list[FileInfo], where: str) -> None:
    """Raises UnsafeEntryError naming the first entry of ``files`` (a ``walk_files`` listing of ``where``)
    that must not be copied or served."""
    for info in files:
        reason = unsafe_reason(info)
        if reason is not None:
            raise UnsafeEntryError(f"{where}: refused, the entry {info.name!r} ({info.path}) is {reason}")


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\x00" not in name


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
        """Every file below ``path`` (depth first, sorted), with ``name`` relative to ``path``. Links, special
        files and folders whose listed name is not a plain name (empty, ``.``, ``..``) are listed too, never
        descended into: ``check_entries`` refuses them."""
        found: list[FileInfo] = []
        stack = [("", path)]
        while stack:
            prefix, current = stack.pop()
            for info in reversed(self.ls(current)):
                rel = f"{prefix}{info.name}"
                if info.is_dir and not info.is_link and _plain_name(info.name):
                    stack.append((rel + "/", info.path))
                else:
                    found.append(
                        FileInfo(rel, info.path, info.is_dir, info.size, info.mtime, info.is_link, info.is_special)
                    )
        return sorted(found, key=lambda f: f.name)


class LocalFileSystem(FileSystem):
    """Entries are described without following links (``path`` itself may be a link: it is the caller's);
    files are opened without following a link in their last component, and only when they are regular."""

    def ls(self, path: str) -> list[FileInfo]:
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        infos = []
        for entry in entries:
            try:
                mode = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while listing
            is_link = stat.S_ISLNK(mode.st_mode)
            is_dir = stat.S_ISDIR(mode.st_mode)
            special = not (is_link or is_dir or stat.S_ISREG(mode.st_mode))
            infos.append(FileInfo(entry.name, entry.path, is_dir, mode.st_size, mode.st_mtime, is_link, special))
        return sorted(infos, key=lambda i: i.name)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def read_text(self, path: str) -> str:
        with self.open_read(path) as reader:
            return reader.read().decode()

    def write_text(self, path: str, text: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)

    def open_read(self, path: str) -> BinaryIO:
        """OSError when ``path`` is a link (ELOOP) or not a regular file (a FIFO would block the reader)."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{path} is not a regular file")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

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
        folder = path.rstrip("/") + "/"
        for item in raw:
            raw_name = str(item["name"])
            is_dir = item.get("type") == "directory"
            size = int(item.get("size") or 0)
            # The name as the store spells it below ``folder``: keys may hold empty, "." or ".." segments,
            # which walk_files must see (never normalised away, nor cut down to a harmless last segment).
            if raw_name.startswith(folder):
                name = raw_name[len(folder) :]
                name = name[:-1] if is_dir and name.endswith("/") else name
            else:  # a store spelling paths another way: its last segment
                name = raw_name.rstrip("/").rsplit("/", 1)[-1]
            if name == "" and not is_dir and size == 0:
                continue  # an object store's empty "folder marker" object (key ``folder/``): nothing to copy
            is_link = item.get("islink") is True or item.get("type") == "link"
            infos.append(FileInfo(name, raw_name.rstrip("/"), is_dir, size, self._mtime(item), is_link))
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
