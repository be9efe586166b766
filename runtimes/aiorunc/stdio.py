"""A container process's stdio inside the shim, in containerd's three forms.

What the client asks for (``Create``/``Exec`` requests' ``stdin``/``stdout``/
``stderr``), as containerd's runc shim understands it
(``cmd/containerd-shim-runc-v2/process/io.go``):

* **FIFO paths** (no scheme, or ``fifo://``): the client made the FIFOs and
  reads/writes their other ends.  The runtime gets pipes; the shim copies
  pipe → stdout/stderr FIFO and stdin FIFO → pipe.  Opening never blocks: for
  each output FIFO the shim opens a read side first (kept open, so a client
  that goes away or reconnects never makes the copy fail) and then its write
  side, both ``O_NONBLOCK``; for stdin it opens the read side ``O_NONBLOCK``
  and then a write side of its own, so stdin reaches EOF only after
  :meth:`ProcessIO.close_stdin` (``CloseIO``) *and* the client closed theirs.
* **``binary:///path/to/logger?key=val``** (and ``binary-v2://``): the shim
  starts the logger with fd 3 = read end of the stdout pipe, fd 4 = read end
  of the stderr pipe, fd 5 = write end of a wait pipe the logger closes (or, for
  ``binary-v2``, writes a byte to) once ready; environment only
  ``CONTAINER_ID`` and ``CONTAINER_NAMESPACE``; arguments are the query's
  keys each followed by its first value.  On :meth:`ProcessIO.close` the
  logger gets SIGTERM, then SIGKILL after 12 s.  With a terminal, fd 3 carries
  the console output and fd 4 stays empty (as Go's shim does).  When the URI
  names ``aiocontainerd-cri-logger`` (the CRI log writer,
  :mod:`aiocontainerd.cri.logger`), no process is started: the shim writes the
  CRI log itself, same format, same arguments.
* **``file:///path``**: stdout and stderr are appended to that file
  (created ``0644`` with its parent directories).

An empty path means ``/dev/null`` for that stream.  With ``terminal=True``
runc allocates a pty and sends its master over the console socket; then
:meth:`ProcessIO.attach_console` copies master → stdout and stdin → master
(stderr is unused, as with a real terminal).

All copying runs on the event loop with non-blocking fds (regular files are
written directly), 128 KiB at a time.

Example::

    pio = await open_stdio(stdin=r.stdin, stdout=r.stdout, stderr=r.stderr,
                           terminal=False, id="c1", namespace="default", reaper=reaper)
    await runc.create("c1", bundle, pid_file=pidfile, stdio=pio)   # calls close_after_start()
    pio.start_copying()
    ...
    exit_status = await reaper.watch(pid)
    await pio.wait(timeout=2)      # output fully copied
    await pio.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import stat
import urllib.parse
from collections.abc import Callable

from aiocontainerd import errors
from aiocontainerd.tasks import wait_fd

from .console import set_winsize
from .reaper import DEVNULL, Child, Reaper

#: bytes moved per read
COPY_BUFFER = 128 << 10
#: pipe capacity asked for the process's stdout/stderr pipes (best effort)
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
#: how long a binary logger gets to exit after SIGTERM (containerd: 12 s)
LOGGER_TERM_TIMEOUT = 12.0


async def _read(fd: int, *, wait_first: bool = False) -> bytes:
    """Read up to COPY_BUFFER bytes; ``b""`` at EOF (EIO from a hung-up pty master is EOF)."""
    if wait_first:
        await wait_fd(fd, write=False)
    while True:
        try:
            return os.read(fd, COPY_BUFFER)
        except BlockingIOError:
            await wait_fd(fd, write=False)
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno == errno.EIO:
                return b""
            raise


async def _write_all(fd: int, data: bytes, *, regular: bool = False) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            if regular:  # pragma: no cover - regular files do not return EAGAIN
                raise
            await wait_fd(fd, write=True)
            continue
        except InterruptedError:
            continue
        view = view[n:]


def _set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


def _close(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


class _Sink:
    """Where an output stream goes: a FIFO (write fd + kept read fd) or a regular file.

    Shared between stdout and stderr for ``file://``; closed when its last user
    is done.
    """

    def __init__(self, fd: int, keeper: int | None, regular: bool, users: int = 1) -> None:
        self.fd = fd
        self.keeper = keeper
        self.regular = regular
        self.users = users

    async def write(self, data: bytes) -> None:
        await _write_all(self.fd, data, regular=self.regular)

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.close()

    def close(self) -> None:
        _close(self.fd)
        _close(self.keeper)
        self.fd = self.keeper = -1


def _open_fifo_both(path: str) -> tuple[int, int]:
    """``(read fd, write fd)`` of the FIFO at ``path``, both non-blocking: the read side
    first, so opening the write side neither blocks nor fails with ENXIO."""
    rd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        wr = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        os.close(rd)
        raise
    return rd, wr


def _open_fifo_or_file_for_write(path: str) -> _Sink:
    """Open an output path: a FIFO without blocking (read side first), else a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise errors.NotFound(f"stdio {path} does not exist") from e
    if stat.S_ISFIFO(st.st_mode):
        keeper, fd = _open_fifo_both(path)
        return _Sink(fd, keeper, regular=False)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    return _Sink(fd, None, regular=True)


class ProcessIO:
    """The shim's side of one process's stdio; made by :func:`open_stdio`.

    Lifecycle: :meth:`child_stdio` fds go to ``runc create``/``exec``, then
    :meth:`close_after_start` (``Runc`` calls it when given the ProcessIO); once the
    runtime succeeded, :meth:`start_copying` (for a TTY, :meth:`attach_console` with
    the received master); after the
    process exited, :meth:`wait` for the output, then :meth:`close`.
    """

    def __init__(self, *, stdin: str, stdout: str, stderr: str, terminal: bool,
                 scheme: str) -> None:
        self.stdin_path = stdin
        self.stdout_path = stdout
        self.stderr_path = stderr
        self.terminal = terminal
        self.scheme = scheme           # "fifo", "file", "binary", "binary-v2", "null"
        self._child: list[int | None] = [None, None, None]
        self._child_owned: list[int] = []     # child ends we close after start
        self._fds: list[int] = []             # closed by close()
        self._sinks: list[_Sink] = []
        self._out_sources: list[tuple[int, _Sink]] = []   # (pipe read end, sink) to copy
        self._stdin_src: int | None = None    # our read side of the stdin FIFO
        self._stdin_keeper: int | None = None # our write side of it (CloseIO closes it)
        self._stdin_dst: int | None = None    # write end of the process's stdin pipe
        self._stdout_sink: _Sink | None = None  # for a console
        self._tasks: list[asyncio.Task[None]] = []
        self._stdin_task: asyncio.Task[None] | None = None
        self._master: int | None = None
        self._logger: Child | None = None
        self._devnull: int | None = None
        self._copying = False
        self._closed = False

    # -- setup helpers (used by open_stdio) ----------------------------------------

    def _null(self) -> int:
        if self._devnull is None:
            self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            self._fds.append(self._devnull)
        return self._devnull

    def _pipe(self) -> tuple[int, int]:
        r, w = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            # F_SETPIPE_SZ: a larger pipe means fewer wakeups for chatty processes
            fcntl.fcntl(r, F_SETPIPE_SZ, PIPE_SIZE)
        return r, w

    def _open_stdin_fifo(self, path: str) -> None:
        self._stdin_src, self._stdin_keeper = _open_fifo_both(path)

    # -- API ---------------------------------------------------------------------------

    def child_stdio(self) -> tuple[int | None, int | None, int | None]:
        """``(stdin, stdout, stderr)`` fds to give the runtime (``None`` = ``/dev/null``).

        Valid until :meth:`close_after_start`.
        """
        return (self._child[0], self._child[1], self._child[2])

    def close_after_start(self) -> None:
        """Close our copies of the fds given to the runtime (go-runc's ``CloseAfterStart``).

        After this the pipes reach EOF when the process (and whatever inherited
        its stdio) is gone.  Idempotent.
        """
        for fd in self._child_owned:
            _close(fd)
        self._child_owned.clear()
        self._child = [None, None, None]

    @property
    def stdin_open(self) -> bool:
        """Whether :meth:`close_stdin` has not been called yet (and there is stdin)."""
        return self._stdin_keeper is not None

    async def attach_console(self, master_fd: int) -> None:
        """Take ``master_fd`` (the pty master from the console socket) and copy through it.

        Master → the stdout FIFO/file; stdin FIFO → master.  ``master_fd`` is
        then owned here (closed by :meth:`close`).  Raises
        ``errors.FailedPrecondition`` if the process has no terminal or a console
        is attached already.
        """
        if not self.terminal:
            raise errors.FailedPrecondition("process has no terminal")
        if self._master is not None:
            raise errors.FailedPrecondition("console already attached")
        self._master = master_fd
        _set_nonblocking(master_fd)
        if self._stdout_sink is not None:
            self._tasks.append(asyncio.ensure_future(
                self._copy_out(master_fd, self._stdout_sink, close_src=False)))
        else:
            self._tasks.append(asyncio.ensure_future(self._drain(master_fd)))
        if self._stdin_src is not None:
            self._stdin_task = asyncio.ensure_future(self._copy_stdin(master_fd, close_dst=False))

    def resize(self, width: int, height: int) -> None:
        """Set the console's size (``TIOCSWINSZ``): ``width`` columns, ``height`` rows.

        Raises ``errors.FailedPrecondition`` without a console.
        """
        if self._master is None:
            raise errors.FailedPrecondition("process has no console")
        set_winsize(self._master, width, height)

    async def close_stdin(self) -> None:
        """``CloseIO``: close the shim's own write side of the stdin FIFO.

        The process sees EOF on stdin once the client closed its side too (at
        once if it never opened one).  Idempotent.
        """
        keeper, self._stdin_keeper = self._stdin_keeper, None
        _close(keeper)
        if self._stdin_src is None and self._stdin_dst is not None:
            _close(self._stdin_dst)
            self._stdin_dst = None

    async def wait(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - contract
        """Return once all output was copied (every stdout/stderr source reached EOF).

        Raises ``TimeoutError`` when that takes longer than ``timeout`` seconds
        (e.g. a daemonized grandchild still holds the pipe).
        """
        tasks = [t for t in self._tasks if not t.done()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        if pending:
            raise TimeoutError(f"stdio copy not finished after {timeout}s")

    async def close(self) -> None:
        """Stop copying and close every fd (FIFOs, pipes, the console master); stop the logger.

        Idempotent.  A binary logger gets SIGTERM and is SIGKILLed after
        ``LOGGER_TERM_TIMEOUT`` seconds.
        """
        if self._closed:
            return
        self._closed = True
        tasks = [*self._tasks, *([self._stdin_task] if self._stdin_task else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.close_after_start()
        for src, _sink in self._out_sources:
            _close(src)
        for sink in self._sinks:
            sink.close()
        for fd in (self._stdin_src, self._stdin_keeper, self._stdin_dst, self._master):
            _close(fd)
        self._stdin_src = self._stdin_keeper = self._stdin_dst = self._master = None
        for fd in self._fds:
            _close(fd)
        self._fds.clear()
        logger, self._logger = self._logger, None
        if logger is not None and logger.returncode is None:
            logger.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(logger.wait(), LOGGER_TERM_TIMEOUT)
            except TimeoutError:
                logger.kill()
                await logger.wait()

    # -- copying ---------------------------------------------------------------------

    def start_copying(self) -> None:
        """Start copying output to the sinks and stdin to the process: call it once the
        runtime's ``create``/``exec`` succeeded (the Go shim's ``processIO.Copy`` order).
        What the runtime itself wrote to stdout/stderr when it failed is then dropped with
        the pipes instead of reaching the client's FIFOs or the CRI log, as with containerd.
        Idempotent; a binary logger reads its pipes itself from the start."""
        if self._copying:
            return
        self._copying = True
        for src, sink in self._out_sources:
            self._tasks.append(asyncio.ensure_future(self._copy_out(src, sink, close_src=True)))
        if self._stdin_src is not None and self._stdin_dst is not None:
            self._stdin_task = asyncio.ensure_future(
                self._copy_stdin(self._stdin_dst, close_dst=True))

    async def _copy_out(self, src: int, sink: _Sink, *, close_src: bool) -> None:
        try:
            while True:
                data = await _read(src)
                if not data:
                    break
                try:
                    await sink.write(data)
                except OSError:
                    # the reader went away for good: keep draining so the
                    # process never blocks on a full pipe
                    await self._drain(src)
                    break
        finally:
            if close_src and not self._closed:
                _close(src)
                self._out_sources = [(s, k) for s, k in self._out_sources if s != src]
            if not self._closed:
                sink.release()

    async def _drain(self, src: int) -> None:
        while await _read(src):
            pass

    async def _copy_stdin(self, dst: int, *, close_dst: bool) -> None:
        src = self._stdin_src
        assert src is not None
        try:
            while True:
                # a FIFO read before any writer would report EOF: wait for readiness
                data = await _read(src, wait_first=True)
                if not data:
                    break
                try:
                    await _write_all(dst, data)
                except OSError:
                    break
        finally:
            if not self._closed:
                if close_dst:
                    _close(dst)
                    self._stdin_dst = None
                _close(src)
                self._stdin_src = None


def _parse(uri: str) -> urllib.parse.ParseResult:
    return urllib.parse.urlparse(uri)


async def open_stdio(*, stdin: str, stdout: str, stderr: str, terminal: bool, id: str,
                     namespace: str, reaper: Reaper, uid: int | None = None,
                     gid: int | None = None) -> ProcessIO:
    """Open a process's stdio as the client described it (see the module docstring).

    ``uid``/``gid``: owner given to the pipes handed to the process (containerd's
    ``IoUID``/``IoGID`` for user-namespaced containers).  Raises
    ``errors.InvalidArgument`` for an unknown scheme, ``errors.NotFound`` for a
    missing FIFO, ``errors.FailedPrecondition`` when a binary logger fails to
    start or to become ready, ``OSError`` otherwise.
    """
    scheme = "null"
    if stdin or stdout or stderr:
        u = _parse(stdout) if stdout else None
        scheme = (u.scheme if u and u.scheme else "fifo")
    pio = ProcessIO(stdin=stdin, stdout=stdout, stderr=stderr, terminal=terminal,
                    scheme=scheme)
    try:
        await _setup(pio, scheme, id, namespace, reaper, uid, gid)
    except BaseException:
        await pio.close()
        raise
    return pio


async def _setup(pio: ProcessIO, scheme: str, id: str, namespace: str, reaper: Reaper,
                 uid: int | None, gid: int | None) -> None:
    if scheme not in ("null", "fifo", "file", "binary", "binary-v2"):
        raise errors.InvalidArgument(f"unknown STDIO scheme {scheme}")

    def chown(fd: int) -> None:
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)

    if pio.terminal:
        # runc's own stdio does not reach the container with a console socket
        pio._child = [None, None, None]
        if pio.stdin_path:
            pio._open_stdin_fifo(_fifo_path(pio.stdin_path))
        if pio.stdout_path:
            if scheme == "file":
                sink = _open_log_file(_parse(pio.stdout_path).path, users=1)
            elif scheme == "fifo":
                sink = _open_fifo_or_file_for_write(_fifo_path(pio.stdout_path))
            elif _is_cri_logger(pio.stdout_path):
                sink = _cri_log_sinks(pio, 1)[0]
            else:
                out_w = await _start_logger(pio, scheme, id, namespace, reaper, chown, terminal=True)
                _set_nonblocking(out_w)
                sink = _Sink(out_w, None, regular=False)
            pio._sinks.append(sink)
            pio._stdout_sink = sink
        return
    if scheme == "null":
        return

    # stdin is a FIFO whatever the output form is
    if pio.stdin_path:
        r, w = pio._pipe()
        pio._child[0] = r
        pio._child_owned.append(r)
        chown(r)
        pio._stdin_dst = w
        _set_nonblocking(w)
        pio._open_stdin_fifo(_fifo_path(pio.stdin_path))

    if scheme in ("fifo", "file"):
        targets: list[_Sink | None] = [None, None]
        if scheme == "file":
            users = int(bool(pio.stdout_path)) + int(bool(pio.stderr_path))
            sink = _open_log_file(_parse(pio.stdout_path).path, users=users)
            pio._sinks.append(sink)
            targets = [sink if pio.stdout_path else None, sink if pio.stderr_path else None]
        else:
            for i, path in enumerate((pio.stdout_path, pio.stderr_path)):
                if path:
                    sink = _open_fifo_or_file_for_write(_fifo_path(path))
                    pio._sinks.append(sink)
                    targets[i] = sink
        for i, sink in enumerate(targets):
            if sink is not None:
                _pipe_out(pio, i + 1, sink, chown)
        return

    # binary logger
    if _is_cri_logger(pio.stdout_path):
        for i, sink in enumerate(_cri_log_sinks(pio, 2)):
            pio._sinks.append(sink)  # type: ignore[arg-type]
            _pipe_out(pio, i + 1, sink, chown)  # type: ignore[arg-type]
    else:
        await _start_logger(pio, scheme, id, namespace, reaper, chown)


def _pipe_out(pio: ProcessIO, child_fd: int, sink: _Sink, chown: Callable[[int], None]) -> None:
    """A pipe whose write end is the child's fd ``child_fd`` (1 or 2) and whose read end
    is copied to ``sink``."""
    r, w = pio._pipe()
    pio._child[child_fd] = w
    pio._child_owned.append(w)
    chown(w)
    _set_nonblocking(r)
    pio._out_sources.append((r, sink))


def _fifo_path(path: str) -> str:
    if path.startswith("fifo://"):
        return _parse(path).path
    return path


def _open_log_file(path: str, *, users: int) -> _Sink:
    if not path:
        raise errors.InvalidArgument("file:// stdio needs a path")
    os.makedirs(os.path.dirname(path) or "/", mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    return _Sink(fd, None, regular=True, users=max(users, 1))


def logger_argv(uri: str) -> list[str]:
    """The logger command line of a ``binary://`` URI: path, then each query key and its first value."""
    u = _parse(uri)
    argv = [urllib.parse.unquote(u.path)]
    seen: dict[str, str] = {}
    for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True):
        seen.setdefault(k, v)
    for k, v in seen.items():
        argv += [k, v]
    return argv


class _CRILogSink:
    """An output stream written as CRI log records by the shim itself (see the module doc)."""

    regular = True

    def __init__(self, writer, delay: float) -> None:  # writer: aiocontainerd.cri.logger.StreamWriter
        self.writer = writer
        self.delay = delay            # PARTIAL_FLUSH_DELAY: a waiting partial line is written then
        self._timer: asyncio.TimerHandle | None = None

    async def write(self, data: bytes) -> None:
        self.writer.feed(data)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.writer.pending:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.writer.flush_partial)

    def release(self) -> None:
        self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.writer.close()


def _is_cri_logger(uri: str) -> bool:
    return os.path.basename(urllib.parse.unquote(_parse(uri).path)) == "aiocontainerd-cri-logger"


def _cri_log_sinks(pio: ProcessIO, n: int) -> list[_CRILogSink]:
    """Sinks for stdout (and stderr when ``n == 2``) writing one CRI log file."""
    from aiocontainerd.cri import logger as crilog  # lazily: only CRI containers need it

    try:
        path, max_line = crilog.parse_args(logger_argv(pio.stdout_path)[1:])
        log_file = crilog.LogFile(path)
    except (ValueError, OSError) as e:
        raise errors.FailedPrecondition(f"failed to open CRI log: {e}") from e
    return [_CRILogSink(crilog.StreamWriter(log_file, stream, max_line), crilog.PARTIAL_FLUSH_DELAY)
            for stream in ("stdout", "stderr")[:n]]


async def _start_logger(pio: ProcessIO, scheme: str, id: str, namespace: str,
                        reaper: Reaper, chown: Callable[[int], None], *,
                        terminal: bool = False) -> int:
    """Start the logger; with ``terminal`` return the write end of its fd 3 pipe (ours)."""
    if not namespace:
        raise errors.InvalidArgument("binary stdio needs a namespace")
    out_r, out_w = pio._pipe()
    err_r, err_w = pio._pipe()
    wait_r, wait_w = os.pipe2(os.O_CLOEXEC)
    if terminal:
        _close(err_w)
    else:
        pio._child[1], pio._child[2] = out_w, err_w
        pio._child_owned += [out_w, err_w]
        chown(out_w)
        chown(err_w)
    try:
        try:
            pio._logger = await reaper.spawn(
                logger_argv(pio.stdout_path), stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL,
                env={"CONTAINER_ID": id, "CONTAINER_NAMESPACE": namespace},
                fd_map={3: out_r, 4: err_r, 5: wait_w})
        except OSError as e:
            raise errors.FailedPrecondition(f"failed to start binary process: {e}") from e
        finally:
            for fd in (out_r, err_r, wait_w):
                os.close(fd)
        _set_nonblocking(wait_r)
        ready = await _read(wait_r, wait_first=True)
        if scheme == "binary-v2" and not ready:
            raise errors.FailedPrecondition(
                "logging binary did not call ready (it may have crashed or exited prematurely)")
    except BaseException:
        if terminal:
            _close(out_w)
        raise
    finally:
        os.close(wait_r)
    return out_w


__all__ = ["COPY_BUFFER", "ProcessIO", "logger_argv", "open_stdio"]
