"""Crash-safe file primitives shared by the lake, the artifact store, the registry and capture.

A reader must never see a half-written file: write to a temp file in the same directory, fsync it,
rename it over the target (atomic on POSIX), then fsync the directory so the rename survives a crash.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

from mlplatform.core.platform.errors import UserError


def temp_path_for(target: Path) -> Path:
    """A dot-prefixed temp path next to `target` (same filesystem, so the rename is atomic)."""
    return target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


HASH_CHUNK_BYTES = 1 << 20  # read size when hashing or copying files


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_stream(handle: BinaryIO) -> str:
    """Hex SHA-256 of what is left to read from `handle`, read in chunks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
        digest.update(chunk)
    return digest.hexdigest()


def copy_hashing(source: BinaryIO, target: BinaryIO) -> tuple[str, int]:
    """Copy what is left of `source` into `target` in chunks; return (hex SHA-256, bytes copied)."""
    digest = hashlib.sha256()
    size = 0
    for chunk in iter(lambda: source.read(HASH_CHUNK_BYTES), b""):
        digest.update(chunk)
        target.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the file at `path`, read in chunks."""
    with open(path, "rb") as handle:
        return sha256_stream(handle)


def write_atomic(
    target: Path, fill: Callable[[BinaryIO], object], *, read_only: bool = False, mode: int = 0o666
) -> None:
    """Replace `target` with what `fill` writes to a temp file, atomically and durably.

    `mode` is the new file's permission bits (before the umask), as for `open`.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_for(target)
    try:
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if read_only:
            os.chmod(temp, 0o444)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)


def write_bytes_atomic(target: Path, payload: bytes, *, read_only: bool = False, mode: int = 0o666) -> None:
    """Replace `target` with `payload` atomically and durably; optionally leave it read-only."""
    write_atomic(target, lambda handle: handle.write(payload), read_only=read_only, mode=mode)


def write_json_atomic(target: Path, data: Any, *, read_only: bool = False) -> None:
    """`write_bytes_atomic` of indented, key-sorted JSON (a trailing newline, UTF-8)."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes_atomic(target, text.encode("utf-8"), read_only=read_only)


class LockTimeout(UserError, TimeoutError):
    """A lock was not taken within its timeout (one-line message)."""


LOCK_POLL_SECONDS = 0.05  # how often a bounded wait for a file lock tries again


def _flock_within(handle: IO[str], operation: int, lock_path: Path, timeout_s: float | None) -> None:
    """flock `handle`, waiting forever (timeout_s None) or at most `timeout_s` seconds."""
    if timeout_s is None:
        fcntl.flock(handle, operation)
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(handle, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout(f"{lock_path} stayed locked for more than {timeout_s:g} s") from None
            time.sleep(min(LOCK_POLL_SECONDS, remaining))


@contextmanager
def file_lock(lock_path: Path, *, exclusive: bool = True, timeout_s: float | None = None) -> Iterator[None]:
    """Hold an inter-process flock on `lock_path` (created if missing) for the block.

    With `timeout_s`, wait at most that long for it, then raise LockTimeout; None waits as long as it takes.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        _flock_within(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, lock_path, timeout_s)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
