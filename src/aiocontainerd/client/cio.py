"""Task I/O for the client: FIFOs copied to and from the caller's streams (containerd's ``pkg/cio``).

A task's stdio reaches the shim as three paths (:class:`Config`). For
streams the client makes a FIFO set (:func:`new_fifo_set`): a fresh folder
under ``/run/containerd/fifo`` holding ``<id>-stdin``, ``<id>-stdout`` and
``<id>-stderr`` (no stderr with a terminal: the tty merges them; a path is
left empty for a stream the caller does not give). The shim opens its ends
during ``Tasks.Create``; the client opens its ends in helper threads, the
way containerd's fifo package opens them asynchronously: a blocking
``open`` returns once the peer has opened its side, so neither side waits
on the other and a reader never sees an early EOF. Opens that never
complete (the task was not created) are released by :meth:`IO.cancel`.

An :data:`IOCreator` takes the process id and returns an :class:`IO`::

    task = await container.new_task(cio.with_streams(stdout=sys.stdout.buffer))
    task = await container.new_task(cio.null_io)
    task = await container.new_task(cio.log_uri("file:///var/log/c1.log"))

Sources (stdin) may be ``bytes``, a binary file object (read in a daemon
thread), an :class:`asyncio.StreamReader` or an async iterable of ``bytes``.
Sinks (stdout, stderr) may be a binary file object, an
:class:`asyncio.StreamWriter` or a callable taking ``bytes`` (sync or async).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import inspect
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, BinaryIO
from urllib.parse import urlparse

from ..errors import InvalidArgument
from ..tasks import wait_fd

log = logging.getLogger(__name__)

DEFAULT_FIFO_DIR = "/run/containerd/fifo"
CHUNK = 32 << 10

Source = bytes | BinaryIO | asyncio.StreamReader | AsyncIterable[bytes]
Sink = BinaryIO | asyncio.StreamWriter | Callable[[bytes], Any]


@dataclasses.dataclass(frozen=True)
class Config:
    """What the shim is told (``CreateTaskRequest``/``ExecProcessRequest`` stdio fields)."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


class IO:
    """A process's I/O on the client side; this base has nothing to copy (paths only)."""

    def __init__(self, config: Config) -> None:
        self.config = config

    @property
    def stdin_done(self) -> asyncio.Future[None] | None:
        """Resolves when the stdin source is drained and our end closed (None: no stdin)."""
        return None

    async def wait(self) -> None:
        """Wait until output is copied to the end (the shim closed its ends)."""

    async def cancel(self) -> None:
        """Stop waiting for the shim to open its ends (the process will not run)."""

    async def close(self) -> None:
        """Stop copying, close our ends and remove the FIFOs."""


IOCreator = Callable[[str], Awaitable[IO]]


async def null_io(id: str) -> IO:
    """No stdio at all: the shim uses /dev/null (containerd's ``cio.NullIO``)."""
    return IO(Config())


def log_uri(uri: str) -> IOCreator:
    """stdout and stderr to a log URI the shim handles: ``file:///abs/path`` or
    ``binary:///path/to/logger?arg=…`` (containerd's ``cio.LogURI``). Raises InvalidArgument."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", "binary") or not parsed.path.startswith("/"):
        raise InvalidArgument(f"log uri {uri!r}: want file:///abs/path or binary:///abs/path")

    async def create(id: str) -> IO:
        return IO(Config(stdout=uri, stderr=uri))
    return create


def log_file(path: str) -> IOCreator:
    """stdout and stderr appended to the file ``path`` by the shim."""
    return log_uri("file://" + os.path.abspath(path))


# -- FIFO sets --------------------------------------------------------------------------------------

@dataclasses.dataclass
class FIFOSet:
    """FIFO paths in their own folder (removed by :meth:`remove`)."""

    config: Config
    dir: str

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def new_fifo_set(id: str, *, stdin: bool = True, stdout: bool = True, stderr: bool = True,
                 terminal: bool = False, fifo_dir: str | None = None) -> FIFOSet:
    """Make FIFOs for process ``id`` in a new folder of ``fifo_dir`` (blocking; mode 0700)."""
    root = fifo_dir or DEFAULT_FIFO_DIR
    os.makedirs(root, mode=0o700, exist_ok=True)
    folder = tempfile.mkdtemp(dir=root)
    paths = {}
    try:
        for name, wanted in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr and not terminal)):
            if wanted:
                path = os.path.join(folder, f"{id}-{name}")
                os.mkfifo(path, 0o700)
                paths[name] = path
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FIFOSet(Config(paths.get("stdin", ""), paths.get("stdout", ""), paths.get("stderr", ""),
                          terminal), folder)


class _PendingOpen:
    """``os.open`` of a FIFO in a daemon thread; :meth:`release` unblocks it by opening the
    other side ourselves when the peer never comes."""

    def __init__(self, path: str, flags: int) -> None:
        self.path = path
        self.flags = flags
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[int] = self.loop.create_future()
        self.thread = threading.Thread(target=self._run, name=f"cio-open {path}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            fd = os.open(self.path, self.flags | os.O_CLOEXEC)
        except OSError as e:
            self._post(self._fail, e)
        else:
            if not self._post(self._done, fd):
                os.close(fd)

    def _post(self, fn: Callable[..., None], arg: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(fn, arg)
            return True
        except RuntimeError:  # the loop is closed
            return False

    def _done(self, fd: int) -> None:
        if self.future.done():
            os.close(fd)
        else:
            self.future.set_result(fd)

    def _fail(self, e: OSError) -> None:
        if not self.future.done():
            self.future.set_exception(e)

    async def release(self) -> None:
        if self.thread.is_alive():
            reading = (self.flags & os.O_ACCMODE) == os.O_RDONLY
            other = (os.O_WRONLY if reading else os.O_RDONLY) | os.O_NONBLOCK | os.O_CLOEXEC
            fd = -1
            with contextlib.suppress(OSError):
                fd = os.open(self.path, other)
            await asyncio.to_thread(self.thread.join, 5)
            if fd >= 0:
                os.close(fd)
        if not self.future.done():
            self.future.cancel()


async def _read(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            await wait_fd(fd, write=False)


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
        except BlockingIOError:
            await wait_fd(fd, write=True)


def _stdin_thread(fd: int, queue: asyncio.Queue[bytes], loop: asyncio.AbstractEventLoop) -> None:
    while True:
        try:
            data = os.read(fd, CHUNK)
        except OSError:
            data = b""
        try:
            loop.call_soon_threadsafe(queue.put_nowait, data)
        except RuntimeError:
            return
        if not data:
            return


async def _chunks(source: Source) -> AsyncIterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        if source:
            yield bytes(source)
    elif isinstance(source, asyncio.StreamReader):
        while data := await source.read(CHUNK):
            yield data
    elif hasattr(source, "__aiter__"):
        async for data in source:  # type: ignore[union-attr]
            yield data
    else:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        threading.Thread(target=_stdin_thread, args=(source.fileno(), queue, asyncio.get_running_loop()),
                         name="cio-stdin", daemon=True).start()
        while data := await queue.get():
            yield data


def _sink(sink: Sink) -> Callable[[bytes], Awaitable[None]]:
    if isinstance(sink, asyncio.StreamWriter):
        async def to_writer(data: bytes) -> None:
            sink.write(data)
            await sink.drain()
        return to_writer
    if hasattr(sink, "write"):
        f: Any = sink
        has_fd = True
        try:
            f.fileno()
        except (AttributeError, OSError, ValueError):
            has_fd = False

        def put(data: bytes) -> None:
            f.write(data)
            with contextlib.suppress(AttributeError):
                f.flush()

        async def to_file(data: bytes) -> None:
            if has_fd:
                await asyncio.to_thread(put, data)
            else:
                put(data)
        return to_file
    if callable(sink):
        async def to_call(data: bytes) -> None:
            result = sink(data)
            if inspect.isawaitable(result):
                await result
        return to_call
    raise InvalidArgument(f"cannot write process output to {sink!r}")


async def _discard(data: bytes) -> None:
    pass


class FifoIO(IO):
    """FIFOs copied to/from streams (see the module doc)."""

    def __init__(self, fifos: FIFOSet, stdin: Source | None, stdout: Sink | None,
                 stderr: Sink | None) -> None:
        super().__init__(fifos.config)
        self.fifos = fifos
        self._pending: list[_PendingOpen] = []
        self._fds: list[int] = []
        self._outputs: list[asyncio.Task[None]] = []
        self._stdin_task: asyncio.Task[None] | None = None
        self._stdin_done: asyncio.Future[None] | None = None
        c = fifos.config
        if c.stdin and stdin is not None:
            self._stdin_done = asyncio.get_running_loop().create_future()
            self._stdin_task = asyncio.ensure_future(self._copy_in(c.stdin, stdin))
        for path, sink in ((c.stdout, stdout), (c.stderr, stderr)):
            if path:  # a stream without a sink is drained, so the process never blocks on it
                self._outputs.append(asyncio.ensure_future(self._copy_out(
                    path, _sink(sink) if sink is not None else _discard)))

    @property
    def stdin_done(self) -> asyncio.Future[None] | None:
        return self._stdin_done

    async def _open(self, path: str, flags: int) -> int:
        pending = _PendingOpen(path, flags)
        self._pending.append(pending)
        fd = await pending.future
        self._pending.remove(pending)
        os.set_blocking(fd, False)
        self._fds.append(fd)
        return fd

    def _close_fd(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.remove(fd)
            os.close(fd)

    async def _copy_out(self, path: str, sink: Callable[[bytes], Awaitable[None]]) -> None:
        try:
            fd = await self._open(path, os.O_RDONLY)
        except (asyncio.CancelledError, OSError):
            return
        try:
            while data := await _read(fd):
                await sink(data)
        except OSError as e:
            log.debug("copying %s stopped: %s", path, e)
        finally:
            self._close_fd(fd)

    async def _copy_in(self, path: str, source: Source) -> None:
        fd = -1
        try:
            fd = await self._open(path, os.O_WRONLY)
            async for data in _chunks(source):
                await _write_all(fd, data)
        except asyncio.CancelledError:
            pass
        except OSError as e:
            if e.errno != errno.EPIPE:
                log.debug("copying to %s stopped: %s", path, e)
        finally:
            if fd >= 0:
                self._close_fd(fd)
            if self._stdin_done is not None and not self._stdin_done.done():
                self._stdin_done.set_result(None)

    async def wait(self) -> None:
        if self._outputs:
            await asyncio.gather(*[asyncio.shield(t) for t in self._outputs], return_exceptions=True)

    async def cancel(self) -> None:
        for pending in list(self._pending):
            await pending.release()

    async def close(self) -> None:
        await self.cancel()
        for task in [*self._outputs, *([self._stdin_task] if self._stdin_task else [])]:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for fd in list(self._fds):
            self._close_fd(fd)
        await asyncio.to_thread(self.fifos.remove)


def with_streams(stdin: Source | None = None, stdout: Sink | None = None, stderr: Sink | None = None, *,
                 terminal: bool = False, fifo_dir: str | None = None) -> IOCreator:
    """Copy ``stdin`` into the process and its output to ``stdout``/``stderr``
    (containerd's ``cio.NewCreator(cio.WithStreams(…))``). Output without a sink is
    read and dropped; with ``terminal`` there is no stderr; without ``stdin`` the
    process's stdin is /dev/null."""
    async def create(id: str) -> IO:
        # shims want both output paths (runc's opens each); stdin only when there is a source
        fifos = await asyncio.to_thread(new_fifo_set, id, stdin=stdin is not None, terminal=terminal,
                                        fifo_dir=fifo_dir)
        return FifoIO(fifos, stdin, stdout, stderr)
    return create


def with_stdio(*, terminal: bool = False, stdin: bool = True, fifo_dir: str | None = None) -> IOCreator:
    """This process's own stdin/stdout/stderr (containerd's ``cio.WithStdio``)."""
    return with_streams(sys.stdin.buffer if stdin else None, sys.stdout.buffer,
                        None if terminal else sys.stderr.buffer, terminal=terminal, fifo_dir=fifo_dir)


def is_fifo(path: str) -> bool:
    """Whether ``path`` is a FIFO (False when it cannot be stat'ed)."""
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False
