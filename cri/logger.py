"""CRI container logs, written on the shim side so they outlive a daemon restart.

The CRI log format (kubelet reads it; ``kubectl logs``/``crictl logs`` show it) is
one record per line, both streams appended to one file::

    <RFC3339Nano timestamp> <stdout|stderr> <P|F> <content>\\n

as containerd's ``internal/cri/io/logger.go`` (``redirectLogs``) writes it:

* the timestamp is Go's ``time.RFC3339Nano`` layout, here always in UTC:
  ``2024-05-01T12:00:00.123456789Z`` with trailing zeros of the fraction dropped
  (``…:00.1Z``) and no fraction at all on a whole second (``…:00Z``);
* content is the bytes of one line of the container's output, without its
  ``\\n`` and without one ``\\r`` right before it (``\\r\\n`` ends a line too);
* a line longer than ``max_line`` bytes is cut every ``max_line`` bytes: each
  full-size piece is a ``P`` (partial) record, the rest an ``F`` record (an
  empty line is an ``F`` record with empty content; a line of exactly
  ``k * max_line`` bytes ends with a full-size ``F``); ``max_line <= 0`` (the
  config's ``-1``) means no limit;
* at end of stream a last line without ``\\n`` is written as ``P`` record(s)
  (containerd: "readLine only returns error when the message doesn't end with
  a newline, in that case it should be treated as a partial line"); nothing is
  written if nothing is pending;
* unlike containerd, a partial line that has waited :data:`PARTIAL_FLUSH_DELAY`
  for the rest of its line is written then, as ``P`` record(s): attach follows
  this log, and a prompt or ``echo -n`` output must reach it (containerd's attach
  reads the live output instead); kubelet joins ``P`` records to one line.

The file is opened as containerd's ``openLogFile`` does: parent directories
created ``0755``, the file ``O_APPEND|O_CREAT`` with mode ``0640``.  Rotation:
kubelet renames the file and calls ``ReopenContainerLog``.  Here the writer
compares, before each write, the ``(st_dev, st_ino)`` of the path with the file it
holds and reopens when they differ or the path is gone (a rename) — so the
CRI service's ``ReopenContainerLog`` only has to call :func:`reopen_log`, which
creates the new file at once (kubelet stats it); ``SIGUSR1`` to the standalone
logger, or :func:`reopen_all` in a process that hosts writers, forces a reopen.
Write errors are swallowed (as containerd does, the output keeps draining);
the last one is kept in :attr:`LogFile.error`.

Two ways to run the writer, one format:

* the ``binary://`` logger protocol (containerd's ``pkg/process`` ``NewBinaryIO``;
  Go's ``containerd-shim-runc-v2`` and ours both speak it): the console script
  ``aiocontainerd-cri-logger`` (:func:`main`) gets the container's stdout on
  fd 3, stderr on fd 4, closes fd 5 once ready, arguments ``path <file>
  max_line <n>`` (the URI's query as key/value pairs, in any order),
  environment ``CONTAINER_ID``/``CONTAINER_NAMESPACE``; SIGTERM makes it drain
  what is readable and exit.  :func:`log_uri` builds the URI;
* inside our shim (``runtimes/aiorunc/stdio.py``): when the ``binary://`` URI
  names ``aiocontainerd-cri-logger``, the shim runs :class:`StreamWriter` on its
  own event loop instead of spawning a process (no ~10 MB / ~20 ms per container).

This module imports the standard library only (plus :mod:`aiocontainerd.errors`
in :func:`log_uri`), so the shim may import it.

Example::

    uri = log_uri("/var/log/pods/ns_pod_uid/c/0.log", max_line=16384)
    # Create(stdout=uri, stderr=uri) -> the shim writes the CRI log
    f = LogFile("/tmp/x.log")
    out = StreamWriter(f, "stdout", 16384)
    out.feed(b"hello\\nwor")      # writes "<ts> stdout F hello\\n"
    out.close()                  # writes "<ts> stdout P wor\\n", releases f
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import shutil
import signal
import sys
import time
import urllib.parse
import weakref
from collections.abc import Sequence

__all__ = [
    "DEFAULT_MAX_LINE",
    "SCRIPT",
    "LogFile",
    "StreamWriter",
    "format_timestamp",
    "is_cri_logger",
    "log_uri",
    "main",
    "parse_args",
    "reopen_all",
    "reopen_log",
    "script_path",
]

#: containerd's default ``max_container_log_line_size`` (bytes)
DEFAULT_MAX_LINE = 16 * 1024
#: seconds a partial line waits for its newline before it is written as ``P``
PARTIAL_FLUSH_DELAY = 0.1
#: the console script implementing the binary logger protocol
SCRIPT = "aiocontainerd-cri-logger"
#: mode of a new log file and of new parent directories (containerd's openLogFile)
FILE_MODE = 0o640
DIR_MODE = 0o755
#: bytes read at a time by the standalone logger
READ_SIZE = 64 << 10

STREAMS = ("stdout", "stderr")
_open_files: weakref.WeakSet[LogFile] = weakref.WeakSet()


# -- format -------------------------------------------------------------------------------

_sec_cache: tuple[int, bytes] = (-1, b"")


def format_timestamp(ns: int) -> bytes:
    """``ns`` (nanoseconds since the epoch) in Go's RFC3339Nano layout, UTC.

    ``1_700_000_000_120_000_000`` -> ``b"2023-11-14T22:13:20.12Z"``.
    """
    global _sec_cache
    sec, frac = divmod(ns, 1_000_000_000)
    cached_sec, head = _sec_cache
    if cached_sec != sec:
        head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
        _sec_cache = (sec, head)
    if not frac:
        return head + b"Z"
    return head + b"." + (b"%09d" % frac).rstrip(b"0") + b"Z"


# -- the file ------------------------------------------------------------------------------

def _open(path: str) -> int:
    os.makedirs(os.path.dirname(path) or "/", mode=DIR_MODE, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)


def reopen_log(path: str) -> None:
    """Create the log file at ``path`` if missing (parents ``0755``, file ``0640``).

    For ``ReopenContainerLog``: after kubelet renamed the old file, the new one
    exists as soon as the RPC returns, and the container's writer (in the shim
    or a logger process) switches to it on its next write.  Raises ``OSError``.
    """
    os.close(_open(path))


def reopen_all() -> None:
    """Reopen every :class:`LogFile` open in this process (a SIGUSR1 handler's job)."""
    for f in list(_open_files):
        f.reopen()


class LogFile:
    """One container's CRI log file, shared by its stdout and stderr writers.

    ``path``: the file (created as containerd does, see the module doc).
    Raises ``OSError`` if it cannot be created.  Writes are blocking
    ``O_APPEND`` writes of whole records (regular files do not block for long;
    each :meth:`write` is one ``write(2)`` so records of two streams never mix).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.users = 0
        self.error: OSError | None = None
        self._ident: tuple[int, int] | None = None
        self._open()
        _open_files.add(self)

    def _open(self) -> None:
        fd = _open(self.path)
        st = os.fstat(fd)
        old, self.fd = self.fd, fd
        self._ident = (st.st_dev, st.st_ino)
        if old >= 0:
            with contextlib.suppress(OSError):
                os.close(old)

    def reopen(self) -> None:
        """Open ``path`` again (creating it) and switch to it; errors kept in :attr:`error`."""
        if self.fd < 0:
            return
        try:
            self._open()
        except OSError as e:
            self.error = e

    def check(self) -> None:
        """Reopen if the file at ``path`` is not the one held (renamed, replaced, removed)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            # renamed away and not recreated yet: create it, unless its folder is gone
            if os.path.isdir(os.path.dirname(self.path) or "/"):
                self.reopen()
            return
        except OSError:
            return
        if (st.st_dev, st.st_ino) != self._ident:
            self.reopen()

    def write(self, data: bytes) -> None:
        """Append ``data`` (after :meth:`check`); an ``OSError`` is kept in :attr:`error`."""
        if self.fd < 0 or not data:
            return
        self.check()
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except InterruptedError:
                continue
            except OSError as e:
                self.error = e
                return
            view = view[n:]

    def acquire(self) -> None:
        self.users += 1

    def release(self) -> None:
        """Drop one user; the last one closes the file."""
        self.users -= 1
        if self.users <= 0:
            self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        _open_files.discard(self)


class StreamWriter:
    """Turns one stream's raw output into CRI records appended to a :class:`LogFile`.

    ``stream``: ``"stdout"`` or ``"stderr"``; ``max_line``: the longest content
    of one record in bytes (``<= 0``: no limit).  :meth:`feed` any chunks;
    :meth:`close` at end of stream (flushes a pending partial line as ``P``
    and releases the file).  Raises ``ValueError`` for an unknown stream.
    """

    def __init__(self, file: LogFile, stream: str, max_line: int = DEFAULT_MAX_LINE) -> None:
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}")
        self.file = file
        self.stream = stream
        self.max_line = max_line
        self._prefix_tail = b" " + stream.encode() + b" "
        self._pending = bytearray()
        self._closed = False
        file.acquire()

    def _records(self, out: list[bytes], ts: bytes, content: bytes | bytearray, last_tag: bytes) -> None:
        head = ts + self._prefix_tail
        m = self.max_line
        if m > 0 and len(content) > m:
            start = 0
            with memoryview(content) as view:
                while len(content) - start > m:
                    out.append(head + b"P " + bytes(view[start:start + m]) + b"\n")
                    start += m
                content = bytes(view[start:])
        out.append(head + last_tag + b" " + bytes(content) + b"\n")

    def feed(self, data: bytes) -> None:
        """Take the next chunk of output; complete lines (and over-long parts) are written now."""
        if self._closed or not data:
            return
        out: list[bytes] = []
        ts = format_timestamp(time.time_ns())
        pending = self._pending
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                pending += data[start:]
                break
            if pending:
                pending += data[start:nl]
                line: bytes | bytearray = pending
            else:
                line = data[start:nl]
            if line.endswith(b"\r"):
                line = line[:-1]
            self._records(out, ts, line, b"F")
            pending.clear()
            start = nl + 1
        m = self.max_line
        if m > 0:
            # a trailing "\r" may still be the start of "\r\n": it does not count yet
            while len(pending) - pending.endswith(b"\r") > m:
                out.append(ts + self._prefix_tail + b"P " + bytes(pending[:m]) + b"\n")
                del pending[:m]
        if out:
            self.file.write(b"".join(out))

    @property
    def pending(self) -> bool:
        """Whether a partial line (no newline yet) waits in the buffer."""
        return bool(self._pending)

    def flush_partial(self) -> None:
        """Write what is pending as ``P`` record(s): at end of stream, and when a partial line
        has waited :data:`PARTIAL_FLUSH_DELAY` for the rest (see the module doc)."""
        if self._pending:
            out: list[bytes] = []
            self._records(out, format_timestamp(time.time_ns()), bytes(self._pending), b"P")
            self._pending.clear()
            self.file.write(b"".join(out))

    def close(self) -> None:
        """End of stream: flush a pending partial line and release the file.  Idempotent."""
        if self._closed:
            return
        self.flush_partial()
        self._closed = True
        self.file.release()


# -- the binary:// URI ---------------------------------------------------------------------

def script_path() -> str:
    """Absolute path of the ``aiocontainerd-cri-logger`` script.

    Looked up next to ``sys.executable`` first (the venv's ``bin``), then on
    ``PATH``.  Raises ``FileNotFoundError`` when it is not installed.
    """
    beside = os.path.join(os.path.dirname(sys.executable), SCRIPT)
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which(SCRIPT)
    if found:
        return os.path.abspath(found)
    raise FileNotFoundError(errno.ENOENT, f"{SCRIPT} not found next to {sys.executable} or on PATH")


def log_uri(path: str, *, max_line: int = DEFAULT_MAX_LINE) -> str:
    """The ``binary://`` stdout/stderr URI that writes the CRI log ``path``.

    ``binary:///<script>?path=<path>&max_line=<n>`` (values percent-encoded);
    give it as both ``stdout`` and ``stderr`` of the task (``stdin`` stays a
    FIFO or empty).  ``path`` must be absolute (``ValueError``); raises
    ``FileNotFoundError`` when the script is not installed (see :func:`script_path`).
    """
    if not os.path.isabs(path):
        raise ValueError(f"log path {path!r} is not absolute")
    query = urllib.parse.urlencode({"path": path, "max_line": str(int(max_line))})
    return "binary://" + urllib.parse.quote(script_path(), safe="/") + "?" + query


def is_cri_logger(argv0: str) -> bool:
    """Whether a binary logger's path names this module's script (the shim's fast path)."""
    return os.path.basename(argv0) == SCRIPT


def parse_args(args: Sequence[str]) -> tuple[str, int]:
    """``(path, max_line)`` from the logger's arguments: key/value pairs in any order.

    Accepts ``path``/``max_line`` with or without leading dashes and the
    ``--key=value`` form.  Raises ``ValueError`` without a path or with a
    non-integer ``max_line``.
    """
    values: dict[str, str] = {}
    i = 0
    while i < len(args):
        key = args[i].lstrip("-")
        if "=" in key:
            key, _, value = key.partition("=")
            i += 1
        else:
            value = args[i + 1] if i + 1 < len(args) else ""
            i += 2
        values.setdefault(key, value)
    path = values.get("path", "")
    if not path:
        raise ValueError("no log path given (path <file>)")
    try:
        max_line = int(values.get("max_line", DEFAULT_MAX_LINE))
    except ValueError:
        raise ValueError(f"max_line {values.get('max_line')!r} is not an integer") from None
    return path, max_line


# -- the standalone logger -------------------------------------------------------------------

def _serve(path: str, max_line: int, fds: Sequence[int], ready_fd: int) -> int:
    f = LogFile(path)
    writers = {fd: StreamWriter(f, stream, max_line) for fd, stream in zip(fds, STREAMS, strict=True)}
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    flags = {"term": False, "usr1": False}

    def on_signal(signum: int, _frame: object) -> None:
        flags["term" if signum == signal.SIGTERM else "usr1"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.set_wakeup_fd(wake_w)
    sel = selectors.DefaultSelector()
    for fd in writers:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    # ready: the shim waits for EOF (binary://) on fd 5, or a byte first (binary-v2://)
    with contextlib.suppress(OSError):
        os.write(ready_fd, b"\0")
    with contextlib.suppress(OSError):
        os.close(ready_fd)

    def pump(fd: int) -> bool:
        """Read what is there; False at EOF."""
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(fd)
                writers[fd].close()
                return False
            writers[fd].feed(data)

    live = set(writers)
    while live:
        waiting = any(w.pending for w in writers.values())
        ready = sel.select(PARTIAL_FLUSH_DELAY if waiting else None)
        if not ready:
            for w in writers.values():
                w.flush_partial()
        for key, _ in ready:
            fd = int(key.fd)
            if fd == wake_r:
                with contextlib.suppress(OSError):
                    while os.read(wake_r, 512):
                        pass
            elif fd in live and not pump(fd):
                live.discard(fd)
        if flags["usr1"]:
            flags["usr1"] = False
            f.reopen()
        if flags["term"]:
            # the shim is done with us: take what is already written, then go
            for fd in list(live):
                pump(fd)
                if fd in live:
                    writers[fd].close()
            break
    f.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``aiocontainerd-cri-logger path <file> [max_line <n>]``: the binary logger protocol.

    fd 3 = stdout, fd 4 = stderr (read ends of the container's pipes), fd 5 =
    readiness (closed once the log file is open).  Exit status 0 at end of both
    streams or on SIGTERM; 2 on bad arguments; 1 if the file cannot be opened
    (fd 5 is then closed without the readiness byte, so a ``binary-v2`` shim
    fails the start).  ``CONTAINER_ID``/``CONTAINER_NAMESPACE`` only label
    error messages (stderr).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    who = f"{os.environ.get('CONTAINER_NAMESPACE', '')}/{os.environ.get('CONTAINER_ID', '')}"
    try:
        path, max_line = parse_args(args)
    except ValueError as e:
        print(f"{SCRIPT}: {e}", file=sys.stderr)
        return 2
    try:
        return _serve(path, max_line, (3, 4), 5)
    except OSError as e:
        print(f"{SCRIPT} {who}: {e}", file=sys.stderr)
        with contextlib.suppress(OSError):
            os.close(5)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
