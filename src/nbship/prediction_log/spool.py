"""The on-disk spool between `record` and the database: one line per entry appended with
one `os.writev` (no fsync per record), bounded in bytes (what does not fit is dropped and
counted), read back in batches, and taken over from processes that died."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nbship.prediction_log.entries import LogEntry, _encode, _row

# the package's one logger (spool and delivery thread share `_warn`), whatever module logs
logger = logging.getLogger("nbship.prediction_log")

LOCK_NAME = ".lock"
WARN_SECONDS = 60.0  # the same warning at most this often
SYNC_SECONDS = 1.0  # spool fsync at most this often (only while the database fails)
READ_CHUNK = 4 << 20  # bytes read at once (doubled while one line is longer)
STALE_NEW_DIR_SECONDS = 3600.0  # a `.new-*` folder this old was left by a failed start


def _whole_lines(parts: list[bytes], written: int) -> int:
    """How many whole lines (each ending in LF) the first `written` bytes of `parts` hold."""
    return b"".join(parts)[:written].count(b"\n")


class _Segment:
    """One spool file. `size` and `closed` change under the log's lock (the writer's
    side); `done` (bytes delivered) and `fd` (for reading) belong to the thread."""

    __slots__ = ("closed", "done", "fd", "owner", "path", "size", "synced")

    def __init__(self, path: Path, size: int, closed: bool, owner: _Adopted | None) -> None:
        self.path = path
        self.size = size
        self.closed = closed
        self.owner = owner  # None: this process's own segment
        self.done = 0
        self.fd: int | None = None
        self.synced = False


class _Adopted:
    """A dead process's spool folder this log holds the lock of and delivers."""

    __slots__ = ("lock_fd", "path", "segments")

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self.lock_fd = lock_fd
        self.segments = 0


def _segment_name(seq: int) -> str:
    return f"seg-{seq:08d}.jsonl"


def _release(path: Path, lock_fd: int, remove: bool) -> None:
    """Unlocks a spool folder; `remove`: it is empty of segments, delete it first."""
    if remove:
        with contextlib.suppress(OSError):
            (path / LOCK_NAME).unlink()
    os.close(lock_fd)
    if remove:
        with contextlib.suppress(OSError):
            path.rmdir()


class Spool:
    """The spool of a `PredictionLog` (which adds the delivery thread): the request path's
    append and the thread's reading, deleting and adopting. One object with the log, so
    `record` reaches its state with no indirection.

    Layout: `<spool_dir>/<pid>-<token>/seg-00000001.jsonl, ...` with a `.lock` file a
    living process holds an exclusive `flock` on. A starting process (and every running
    one, every 30 s) adopts the folders whose lock is free, so no two processes deliver
    the same segments. Start the log in the process that serves (after any fork), on a
    local disk; the spool holds request data (files are 0600).
    """

    def __init__(
        self,
        spool_dir: str | os.PathLike[str],
        *,
        batch_size: int,
        max_spool_bytes: int,
        segment_bytes: int,
        idle_seconds: float,
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self._batch_size = batch_size
        self._max_spool_bytes = max_spool_bytes
        self._segment_bytes = segment_bytes
        self._idle_seconds = idle_seconds

        # writer side, under _lock
        self._lock = threading.Lock()
        self._accepting = False
        self._dir: Path | None = None
        self._lock_fd: int | None = None
        self._seq = 0
        self._fd: int | None = None
        self._cur: _Segment | None = None
        self._own: dict[int, _Segment] = {}
        self._spool_bytes = 0  # own segment files not deleted yet
        self._foreign_bytes = 0  # adopted segment files not deleted yet
        self._recorded = 0
        self._settled = 0  # own complete lines delivered, rejected or unreadable
        self._dropped = 0
        self._record_errors = 0
        self._last_write = 0.0
        self._wake_sent = False

        # the delivery thread's side
        self._wake = threading.Event()  # more to deliver, or flush/close
        self._foreign: list[_Segment] = []
        self._adopted: dict[Path, _Adopted] = {}
        self._warned: dict[str, float] = {}
        self._reported_drops = 0
        self._last_sync = 0.0
        self._corrupt = 0

    def _claim(self) -> None:
        """Makes and locks a spool folder of this process's own; entries are taken from
        now on."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        # made under a dot name and renamed once locked: others adopt only locked-able
        # folders without a dot, so they never see one between mkdir and flock
        fresh = self.spool_dir / f".new-{token}"
        fresh.mkdir()
        lock_fd = os.open(fresh / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        own = self.spool_dir / token
        os.rename(fresh, own)
        with self._lock:
            self._dir, self._lock_fd = own, lock_fd
            self._accepting = True

    # the request path -----------------------------------------------------------------------

    def record(self, entry: LogEntry) -> bool:
        """Spools one entry for the database. True: it is acknowledged (in a spool file,
        delivered even if this process is killed now); False: it was dropped (spool
        full, log not running) or could not be encoded, and counted. Never raises."""
        parts, lines = self._encoded([entry])
        return lines == 1 and self._append(parts, 1) == 1

    def record_many(self, entries: Sequence[LogEntry]) -> int:
        """Spools `entries` in one write, under one hold of the lock: how many were
        acknowledged (see `record`). For a background thread with many at once (a
        shadow's answers): one append each made the request path wait for the lock, and
        then for the GIL, once per entry."""
        parts, lines = self._encoded(entries)
        # joined once: writev takes at most IOV_MAX (1024) parts, a line has 6
        return self._append([b"".join(parts)], lines) if lines else 0

    def _encoded(self, entries: Sequence[LogEntry]) -> tuple[list[bytes], int]:
        """The parts of the entries JSON can encode, and how many those are; the others
        are counted as record errors."""
        parts: list[bytes] = []
        lines = 0
        for entry in entries:
            try:
                parts += _encode(entry)
                lines += 1
            except Exception:  # an entry JSON cannot encode
                with self._lock:
                    self._record_errors += 1
        return parts, lines

    def _append(self, parts: list[bytes], lines: int) -> int:
        """Appends `lines` whole lines, given as `parts`, with one system call (like a
        write of them joined, without the copy); how many were written. Never raises."""
        try:
            length = sum(map(len, parts))
            with self._lock:
                if not self._accepting or (
                    self._spool_bytes + self._foreign_bytes + length > self._max_spool_bytes
                ):
                    self._dropped += lines
                    return 0
                if self._fd is None:
                    self._open_segment()
                cur = self._cur
                try:
                    written = os.writev(self._fd, parts)  # type: ignore[arg-type]
                except OSError:
                    written = -1
                if written != length:  # disk full or I/O error
                    # the lines written whole are in the file; a partial one ends this
                    # segment, so that the next is clean
                    whole = _whole_lines(parts, written) if written > 0 else 0
                    self._record_errors += lines - whole
                    self._recorded += whole
                    if written > 0:
                        cur.size += written  # type: ignore[union-attr]
                        self._spool_bytes += written
                    self._close_current()
                    return whole
                cur.size += written  # type: ignore[union-attr]
                self._spool_bytes += written
                self._recorded += lines
                self._last_write = time.monotonic()
                if cur.size >= self._segment_bytes:  # type: ignore[union-attr]
                    self._close_current()
                wake = not self._wake_sent and self._recorded - self._settled >= self._batch_size
                if wake:
                    self._wake_sent = True
            if wake:
                self._wake.set()
            return lines
        except Exception:  # no spool folder, ...
            with self._lock:
                self._record_errors += lines
            return 0

    def _open_segment(self) -> None:  # under _lock
        assert self._dir is not None
        self._seq += 1
        path = self._dir / _segment_name(self._seq)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(path, flags, 0o600)  # requests may hold personal data
        self._cur = _Segment(path, 0, closed=False, owner=None)
        self._own[self._seq] = self._cur

    def _close_current(self) -> None:  # under _lock
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        if self._cur is not None:
            self._cur.closed = True
        self._fd, self._cur = None, None

    # read back by the delivery thread ---------------------------------------------------------

    def _warn(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -WARN_SECONDS) >= WARN_SECONDS:
            self._warned[key] = now
            logger.warning(message, *args)

    def _segments(self) -> list[_Segment]:
        """Adopted segments first, then this process's, oldest first."""
        with self._lock:
            own = list(self._own.values())
        return [*self._foreign, *own]

    def _next_batch(
        self,
    ) -> tuple[list[dict[str, Any]], list[tuple[_Segment, int, int, int, int]]]:
        """Up to `batch_size` rows, oldest first, and for each segment read: (segment,
        end offset, complete lines, rows, unreadable lines)."""
        rows: list[dict[str, Any]] = []
        marks: list[tuple[_Segment, int, int, int, int]] = []
        for segment in self._segments():
            room = self._batch_size - len(rows)
            if room <= 0:
                break
            with self._lock:
                size, closed = segment.size, segment.closed
            if segment.done >= size:
                continue
            try:
                end, taken, lines, bad = self._read(segment, size, closed, room)
            except FileNotFoundError:  # removed behind our back: nothing to deliver
                self._warn("missing", "prediction log: %s disappeared", segment.path)
                with self._lock:
                    segment.closed = True
                end, taken, lines, bad = size, [], 0, 1
            if end > segment.done:
                rows.extend(taken)
                marks.append((segment, end, lines, len(taken), bad))
        return rows, marks

    def _read(
        self, segment: _Segment, size: int, closed: bool, room: int
    ) -> tuple[int, list[dict[str, Any]], int, int]:
        """Up to `room` lines of `segment` from where delivery stands: (end offset,
        rows, complete lines read, unreadable lines and fragments)."""
        if segment.fd is None:
            segment.fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
        rows: list[dict[str, Any]] = []
        pos, lines, bad, chunk = segment.done, 0, 0, READ_CHUNK
        while pos < size and lines < room:
            data = os.pread(segment.fd, min(chunk, size - pos), pos)
            if not data:  # shorter than it should be: nothing more to read
                self._warn("short", "prediction log: %s is shorter than expected", segment.path)
                return size, rows, lines, bad + 1
            start = 0  # where the next line of `data` begins
            while lines < room:
                newline = data.find(b"\n", start)
                if newline < 0:
                    break
                row = self._parse(data, start, newline, segment)
                if row is None:
                    bad += 1
                else:
                    rows.append(row)
                start = newline + 1
                lines += 1
            if start == 0:  # not one complete line
                if pos + len(data) < size:  # a line longer than the chunk
                    chunk *= 2
                    continue
                if closed:  # a last line without its newline: cut short by a kill
                    row = None
                    if segment.owner is not None:  # (ours: a failed write, never acked)
                        row = self._parse(data, 0, len(data), segment, validate=True)
                    if row is None:
                        bad += 1
                    else:
                        rows.append(row)  # all but the newline made it: keep it
                    pos = size
                break
            pos += start
            chunk = READ_CHUNK
        return pos, rows, lines, bad

    def _parse(
        self, data: bytes, start: int, end: int, segment: _Segment, validate: bool = False
    ) -> dict[str, Any] | None:
        try:
            return _row(data, start, end, validate)
        except Exception:
            self._warn("corrupt", "prediction log: unreadable line in %s skipped", segment.path)
            return None

    def _remove_delivered(self) -> None:
        """Deletes closed segments whose rows are all committed."""
        for segment in self._segments():
            with self._lock:
                finished = segment.closed and segment.done >= segment.size
            if not finished:
                continue
            if segment.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(segment.fd)
                segment.fd = None
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()
            owner = segment.owner
            if owner is None:
                with self._lock:
                    self._own = {k: s for k, s in self._own.items() if s is not segment}
                    self._spool_bytes -= segment.size
                continue
            self._foreign.remove(segment)
            with self._lock:
                self._foreign_bytes -= segment.size
            owner.segments -= 1
            if owner.segments == 0:
                _release(owner.path, owner.lock_fd, remove=True)
                del self._adopted[owner.path]

    def _housekeeping(self, stopping: bool) -> None:
        try:
            with self._lock:
                cur = self._cur
                if (
                    cur is not None
                    and cur.done >= cur.size
                    and time.monotonic() - self._last_write >= self._idle_seconds
                ):
                    self._close_current()  # idle and delivered: its file can go
                dropped = self._dropped
            self._remove_delivered()
            if dropped > self._reported_drops and not stopping:
                self._warn(
                    "full",
                    "prediction log: spool full (%d bytes), %d entries dropped so far",
                    self._max_spool_bytes,
                    dropped,
                )
                self._reported_drops = dropped
        except Exception as exc:
            self._warn("housekeeping", "prediction log: spool housekeeping failed: %s", exc)

    def _sync_spool(self) -> None:
        """fsync what waits in the spool (the database is failing, it may wait long)."""
        now = time.monotonic()
        if now - self._last_sync < SYNC_SECONDS:
            return
        self._last_sync = now
        try:
            folders: set[Path] = set()
            for segment in self._segments():
                if segment.synced or segment.done >= segment.size:
                    continue
                if segment.fd is None:
                    segment.fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
                os.fsync(segment.fd)
                folders.add(segment.path.parent)
                with self._lock:
                    segment.synced = segment.closed
            for folder in folders:
                fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except Exception as exc:
            self._warn("sync", "prediction log: spool fsync failed: %s", exc)

    def _scan(self) -> None:
        """Adopts the spool folders of dead processes (their lock is free)."""
        try:
            folders = sorted(p for p in self.spool_dir.iterdir() if p.is_dir())
        except OSError as exc:
            self._warn("scan", "prediction log: cannot list %s: %s", self.spool_dir, exc)
            folders = []
        for folder in folders:
            if folder == self._dir or folder in self._adopted:
                continue
            try:
                if folder.name.startswith("."):
                    self._remove_stale(folder)
                else:
                    self._adopt(folder)
            except OSError as exc:
                self._warn("adopt", "prediction log: cannot adopt %s: %s", folder, exc)

    def _adopt(self, folder: Path) -> None:
        try:
            lock_fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # being removed by whoever delivered it
            with contextlib.suppress(OSError):
                folder.rmdir()
            return
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(lock_fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return  # its process is alive (or another one adopted it)
            raise
        try:  # the lock we hold must still be the folder's (not one just removed)
            current = os.stat(folder / LOCK_NAME).st_ino == os.fstat(lock_fd).st_ino
        except FileNotFoundError:
            current = False
        if not current:
            os.close(lock_fd)
            return
        owner = _Adopted(folder, lock_fd)
        try:
            segments = [
                _Segment(path, path.stat().st_size, closed=True, owner=owner)
                for path in sorted(folder.glob("seg-*.jsonl"))
            ]
        except BaseException:
            os.close(lock_fd)  # unlocked: adopted again at the next look
            raise
        if not segments:
            _release(folder, lock_fd, remove=True)
            return
        owner.segments = len(segments)
        self._adopted[folder] = owner
        self._foreign.extend(segments)
        with self._lock:
            self._foreign_bytes += sum(s.size for s in segments)
        logger.info(
            "prediction log: adopted %d spool file(s) of a stopped process from %s",
            len(segments),
            folder,
        )

    def _remove_stale(self, folder: Path) -> None:
        """A `.new-*` folder a process died in before it was ready (never segments)."""
        if time.time() - folder.stat().st_mtime < STALE_NEW_DIR_SECONDS:
            return
        lock_fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            return
        _release(folder, lock_fd, remove=True)

    def _release_spools(self) -> None:
        """After the last attempt: closes the segments read, unlocks every folder and
        deletes this process's if it holds no segment."""
        for segment in self._segments():
            if segment.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(segment.fd)
                segment.fd = None
        for owner in list(self._adopted.values()):
            _release(owner.path, owner.lock_fd, remove=False)
        self._adopted.clear()
        self._foreign.clear()
        with self._lock:
            own_left = bool(self._own)
            folder, lock_fd = self._dir, self._lock_fd
            self._lock_fd = None
        if folder is not None and lock_fd is not None:
            _release(folder, lock_fd, remove=not own_left)
