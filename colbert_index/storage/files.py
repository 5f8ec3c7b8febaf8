"""Durable writes: fsync, a directory that appears whole or not at all, and the writer's lock.

Every change to an index writes new files, fsyncs them and only then commits (:mod:`.manifest`); a build
stages a whole directory and renames it into place (:func:`atomic_directory`). See docs/format.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from colbert_index.errors import IndexLockedError

logger = logging.getLogger(__name__)

LOCK = "write.lock"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (its entries) by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_json(directory: Path, name: str, obj: dict) -> None:
    """Write ``obj`` as ``directory/name`` atomically: to a temporary name, fsynced, renamed over ``name``, then
    the directory fsynced so that the rename itself survives a power cut."""
    tmp = directory / (name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    fsync_path(tmp)
    os.replace(tmp, directory / name)
    fsync_path(directory)


def sync_tree(directory: Path) -> None:
    """fsync every file directly in ``directory``, then the directory itself (its entries)."""
    for f in directory.iterdir():
        if f.is_file():
            fsync_path(f)
    fsync_path(directory)


STAGING_LOCK = ".staging.lock"  # held (flock) by the process building a staging directory


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` when the block succeeds.

    On an exception the temporary directory is removed and ``path`` is left untouched. A process killed
    mid-build (SIGKILL, power cut) cannot clean up: its staging directory (gigabytes at scale) is removed by
    the next build of the same ``path`` (:func:`remove_abandoned_staging`).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    lock = os.open(tmp / STAGING_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield tmp
        (tmp / STAGING_LOCK).unlink()  # from here on nobody judges tmp abandoned: no lock file
        os.close(lock)
        lock = None
        for sub in tmp.iterdir():
            if sub.is_dir():
                sync_tree(sub)
        sync_tree(tmp)
        if path.exists():
            trash = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def remove_abandoned_staging(path: Path) -> list[Path]:
    """Remove the staging directories of earlier builds of ``path`` whose process has died, and return them.

    A build holds an ``flock`` on its staging directory's lock file until it renames the directory into place;
    the kernel drops the lock when the process dies, so a lock that can be taken marks an abandoned directory.
    Directories without a lock file (a build about to rename, or written by an older version) are left alone.
    """
    removed = []
    for staging in sorted(path.parent.glob(f".{glob.escape(path.name)}.tmp-*")):
        try:
            fd = os.open(staging / STAGING_LOCK, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # a live build holds it
            continue
        shutil.rmtree(staging, ignore_errors=True)
        os.close(fd)
        logger.warning("removed %s, left by a build of %s that did not finish", staging, path)
        removed.append(staging)
    return removed


class WriterLock:
    """An exclusive, non-blocking ``flock`` on ``<index>/write.lock`` for the duration of one write.

    The kernel releases it when the holder exits or dies, so a crash never leaves a stale lock. The
    holder writes its pid, host and start time into the file for the error a second writer gets.
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} on {info['host']}, since {info['since']}"
            except (ValueError, KeyError, TypeError):
                who = "holder unknown"
            raise IndexLockedError(
                f"{self.path.parent}: another writer holds {self.path.name} ({who}); an index takes one "
                "writer at a time: retry when it has finished (readers are never blocked)"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError as e:  # a full disk: the write cannot be made, and the lock must not outlive this call
            self._release(fd)
            raise OSError(e.errno, f"{self.path.parent}: cannot write {self.path.name}: {e.strerror}") from e
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            self._release(fd)

    @staticmethod
    def _release(fd: int) -> None:
        """Empty the holder's record (best effort), unlock and close; the lock is released even when the
        record cannot be emptied."""
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
