"""Processes in CRI containers: exec, attach and port-forward (the CRI's StreamRuntime).

Follows containerd's ``internal/cri/server/container_execsync.go`` (``execInternal``,
``drainExecSyncIO``), ``container_exec.go``, ``container_attach.go``,
``sandbox_portforward_linux.go`` and the FIFO I/O of ``internal/cri/io``.

Exec (:func:`run_exec`): a new process is added to the container's task with a
random exec ID and the container's own ``process`` spec with ``args`` replaced
(``terminal`` = tty, ``TERM=xterm`` added for a tty, ``commandLine`` dropped).
Its stdio are FIFOs in a fresh folder under the container's volatile folder:
``<dir>/<exec id>/{stdin,stdout,stderr}`` (no stderr with a tty, no stdin unless
asked). We open our read ends before the shim opens its write ends (a parked
writer of our own keeps an early EOF away until the shim has them open: shims
open an exec's stdio when it starts), and our stdin write end after the start.
Output is copied to the caller's sinks, the resize stream sent to ``task.resize_pty``. When the
process exits the output is drained until EOF — or, with ``drain_timeout`` > 0,
for at most that long (a background child holding the pipes open must not hold
the caller forever). With ``timeout`` the process is killed (SIGKILL) when it
runs longer, the output drained for at most ``drain_timeout`` (1 s when
unset), and DeadlineExceeded raised. The exec process is always deleted
(killed first when it still runs: the caller went away, or the timeout).

Attach (:meth:`CRIStreamRuntime.attach`): the container's output is written by
the shim (CRI log format, possibly by a ``binary://`` logger) so attach follows
the container's log file from its end, decoding the CRI lines back into the
stdout/stderr byte streams (partial ``P`` lines joined, ``F`` lines get their
newline back). Stdin goes to the container's stdin FIFO (created at
StartContainer when the config asks for stdin); with ``stdin_once`` the task's
stdin is closed (``CloseIO``) when the client's stdin ends. Attach returns when
the container exits (or the client leaves).

Port-forward (:meth:`CRIStreamRuntime.port_forward`): a TCP socket is created
and connected to ``localhost:<port>`` (IPv4, then IPv6) inside the pod's network
namespace (``cri.netns.run_in``: a dedicated thread enters the netns; the socket
keeps the namespace it was created in), then handed to asyncio, and both
directions pumped until each side has finished (the client's half-close shuts
down the socket's write side; the pod's EOF closes the client writer). A
hostNetwork pod forwards on the host's loopback.

Errors: NotFound (container/sandbox), FailedPrecondition (container not running,
netns closed), DeadlineExceeded (exec timeout), Unavailable (connect refused in
the pod), and the task's own errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import json
import logging
import os
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    NotFound,
    Unavailable,
)
from aiocontainerd.tasks import wait_fd

from .streaming.runtime import AsyncReader, AsyncWriter, TerminalSize

log = logging.getLogger(__name__)

PROCESS_SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
SIGKILL = 9
CHUNK = 32 << 10
#: drain limit after a timeout kill when ``drain_exec_sync_io_timeout`` is unset (0)
TIMEOUT_DRAIN = 1.0
#: how often attach looks at the log file for new output
LOG_POLL = 0.05

Sink = Callable[[bytes], Awaitable[None]]

__all__ = [
    "CRIStreamRuntime",
    "CappedBuffer",
    "ExecTarget",
    "FifoSet",
    "LogFollower",
    "exec_process_spec",
    "new_exec_id",
    "run_exec",
]


def new_exec_id() -> str:
    """A random 64-hex exec ID (containerd's ``util.GenerateID``)."""
    return secrets.token_hex(32)


def exec_process_spec(process: Mapping[str, Any], cmd: list[str], *, tty: bool) -> pb.Any:
    """The container's ``process`` object with ``args`` = ``cmd``, ``terminal`` = ``tty``
    (plus ``TERM=xterm`` for a tty, as containerd's ``oci.WithEnv``), ``commandLine`` dropped,
    packed as the shim's exec spec Any."""
    p = copy.deepcopy(dict(process))
    p["args"] = list(cmd)
    p.pop("commandLine", None)
    p["terminal"] = bool(tty)
    p.pop("consoleSize", None)
    if tty:
        env = [e for e in p.get("env") or [] if not e.startswith("TERM=")]
        env.append("TERM=xterm")
        p["env"] = env
    return pb.Any(type_url=PROCESS_SPEC_TYPE_URL, value=json.dumps(p).encode())


class CappedBuffer:
    """Keeps the first ``limit`` bytes written and drops the rest (containerd's ``cappedWriter``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()

    async def write(self, data: bytes) -> None:
        room = self.limit - len(self._buf)
        if room > 0:
            self._buf += data[:room]

    @property
    def full(self) -> bool:
        return len(self._buf) >= self.limit

    def getvalue(self) -> bytes:
        return bytes(self._buf)


# -- FIFO plumbing -------------------------------------------------------------------------------

async def read_fd(fd: int, n: int = CHUNK) -> bytes:
    """Read from a non-blocking fd; ``b""`` at EOF."""
    while True:
        try:
            return os.read(fd, n)
        except BlockingIOError:
            await wait_fd(fd, write=False)
        except OSError as e:
            if e.errno == errno.EIO:   # pty master after the slave closed
                return b""
            raise


async def write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking fd. Raises BrokenPipeError when the reader is gone."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await wait_fd(fd, write=True)
            continue
        view = view[n:]


def _close(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def _mkfifo(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.mkfifo(path, 0o600)


@dataclass
class FifoSet:
    """One process's FIFOs in their own folder (``stdin``/``stdout``/``stderr``; "" = none).

    Lifecycle: :meth:`create` → :meth:`open_outputs` (before the shim opens them) →
    exec/create and start calls → :meth:`shim_opened` → copy with :meth:`read`/:meth:`write_stdin` →
    :meth:`close` (closes our fds, removes the folder).
    """

    dir: str
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""

    def __post_init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._parked: list[int] = []

    @classmethod
    def create(cls, dir: str, *, stdin: bool, stdout: bool = True, stderr: bool = True) -> FifoSet:
        """Make the folder and the FIFOs asked for (blocking; cheap)."""
        os.makedirs(dir, mode=0o700, exist_ok=True)
        fs = cls(dir, *(os.path.join(dir, name) if want else ""
                        for name, want in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr))))
        for p in (fs.stdin, fs.stdout, fs.stderr):
            if p:
                _mkfifo(p)
        if fs.stdin:
            # our write end, open before the process can read: it sees our data, and EOF only
            # when we close (as containerd's cio opens stdin before the exec). Read-write: a
            # FIFO opened so never fails with ENXIO for want of a reader (Linux); we never read.
            fs._fds["stdin"] = os.open(fs.stdin, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        return fs

    def open_outputs(self) -> None:
        """Open our read ends of stdout/stderr, each with a parked writer against an early EOF."""
        for name in ("stdout", "stderr"):
            path = getattr(self, name)
            if path:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                self._fds[name] = fd
                self._parked.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))

    def shim_opened(self) -> None:
        """The shim has its ends: drop the parked writers (EOF now means the process side closed)."""
        for fd in self._parked:
            _close(fd)
        self._parked.clear()

    def fd(self, name: str) -> int | None:
        return self._fds.get(name)

    async def copy_out(self, name: str, sink: Sink) -> None:
        """Copy ``stdout``/``stderr`` to ``sink`` until EOF (sink errors stop the sending, not
        the reading: the process must never block on a full pipe)."""
        fd = self._fds.get(name)
        if fd is None:
            return
        ok = True
        while True:
            data = await read_fd(fd)
            if not data:
                return
            if ok:
                try:
                    await sink(data)
                except (ConnectionError, OSError) as e:
                    log.debug("output sink gone: %s", e)
                    ok = False

    def close_stdin(self) -> None:
        _close(self._fds.pop("stdin", None))

    def close(self) -> None:
        for fd in self._parked:
            _close(fd)
        self._parked.clear()
        for fd in self._fds.values():
            _close(fd)
        self._fds.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


async def pump_stdin(reader: AsyncReader, fd: int, on_eof: Callable[[], Awaitable[None]] | None) -> None:
    """Copy the client's stdin to ``fd`` until EOF, then run ``on_eof`` (close the process' stdin)."""
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            await write_fd(fd, data)
    except (BrokenPipeError, ConnectionError):
        return
    if on_eof is not None:
        with contextlib.suppress(NotFound, FailedPrecondition, Unavailable):
            await on_eof()


def _writer_sink(writer: AsyncWriter) -> Sink:
    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()
    return send


async def _close_writer(writer: AsyncWriter | None) -> None:
    if writer is None:
        return
    with contextlib.suppress(Exception):
        if not writer.is_closing():
            writer.close()
        await writer.wait_closed()


async def _resize_loop(resize: AsyncIterator[TerminalSize] | None,
                       apply: Callable[[int, int], Awaitable[None]]) -> None:
    if resize is None:
        return
    async for size in resize:
        if size.width == 0 and size.height == 0:
            continue
        try:
            await apply(size.width, size.height)
        except Exception as e:  # the process may be gone: keep reading the stream
            log.debug("resize failed: %s", e)


async def _cancel(*tasks: asyncio.Task[Any] | None) -> None:
    live = [t for t in tasks if t is not None and not t.done()]
    for t in live:
        t.cancel()
    for t in live:
        with contextlib.suppress(BaseException):
            await t


# -- exec ----------------------------------------------------------------------------------------

class TaskLike(Protocol):
    """What :func:`run_exec` needs of ``runtimes.v2.manager.Task``."""

    async def exec(self, exec_id: str, *, spec: pb.Any | None, stdin: str = "", stdout: str = "",
                   stderr: str = "", terminal: bool = False) -> None: ...
    async def start(self, exec_id: str = "") -> int: ...
    async def wait(self, exec_id: str = "") -> Any: ...
    async def kill(self, signal: int, *, exec_id: str = "", all: bool = False) -> None: ...
    async def delete_process(self, exec_id: str) -> Any: ...
    async def resize_pty(self, width: int, height: int, exec_id: str = "") -> None: ...
    async def close_io(self, exec_id: str = "") -> None: ...


async def run_exec(task: TaskLike, process: Mapping[str, Any], cmd: list[str], *, fifo_root: str,
                   stdin: AsyncReader | None = None, stdout: Sink | None = None,
                   stderr: Sink | None = None, tty: bool = False,
                   resize: AsyncIterator[TerminalSize] | None = None, timeout: float = 0,  # noqa: ASYNC109
                   drain_timeout: float = 0, exec_id: str = "") -> int:
    """Run ``cmd`` as a new process of ``task`` (see the module doc); return its exit status.

    ``process``: the container's OCI ``process`` object; ``fifo_root``: folder for the
    exec's FIFO folder; ``stdout``/``stderr``: async sinks (None: discarded);
    ``timeout`` seconds (0: none) → DeadlineExceeded after killing the process;
    ``drain_timeout``: at most this long reading output after the exit (0: until EOF).
    Output is always read, so the process never blocks on a full pipe.
    """
    exec_id = exec_id or new_exec_id()
    spec = exec_process_spec(process, cmd, tty=tty)
    fifos = await asyncio.to_thread(FifoSet.create, os.path.join(fifo_root, exec_id[:16]),
                                    stdin=stdin is not None, stderr=not tty)
    copiers: list[asyncio.Task[None]] = []
    side: list[asyncio.Task[None]] = []
    created = False
    exited = False
    try:
        fifos.open_outputs()
        await task.exec(exec_id, spec=spec, stdin=fifos.stdin, stdout=fifos.stdout,
                        stderr=fifos.stderr, terminal=tty)
        created = True
        copiers.append(asyncio.ensure_future(fifos.copy_out("stdout", stdout or _discard)))
        if fifos.stderr:
            copiers.append(asyncio.ensure_future(fifos.copy_out("stderr", stderr or _discard)))
        waiter = asyncio.ensure_future(task.wait(exec_id))
        side.append(waiter)
        try:
            await task.start(exec_id)
        except BaseException:
            waiter.cancel()
            raise
        fifos.shim_opened()   # shims open an exec's stdio at start (the Go shim does)
        if stdin is not None and fifos.fd("stdin") is not None:
            async def close_stdin() -> None:
                fifos.close_stdin()
                await task.close_io(exec_id)
            side.append(asyncio.ensure_future(pump_stdin(stdin, fifos.fd("stdin"), close_stdin)))
        if tty:
            side.append(asyncio.ensure_future(_resize_loop(
                resize, lambda w, h: task.resize_pty(w, h, exec_id))))
        try:
            exit_ = await asyncio.wait_for(asyncio.shield(waiter), timeout or None)
        except TimeoutError:
            with contextlib.suppress(NotFound, FailedPrecondition):
                await task.kill(SIGKILL, exec_id=exec_id)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(waiter), 10)
            exited = True
            await _drain(copiers, drain_timeout or TIMEOUT_DRAIN)
            raise DeadlineExceeded(f"timeout {timeout:g}s exceeded running {cmd!r} in the container") \
                from None
        exited = True
        drained = await _drain(copiers, drain_timeout or None)
        if not drained:
            log.warning("exec %s exited but its output is still held open by other processes; "
                        "stopped reading after %gs", exec_id, drain_timeout)
        return exit_.status
    finally:
        await _cancel(*side)
        if created:
            if not exited:
                with contextlib.suppress(Exception):
                    await task.kill(SIGKILL, exec_id=exec_id)
            with contextlib.suppress(Exception):
                await asyncio.shield(_delete_process(task, exec_id, wait=not exited))
        await _cancel(*copiers)
        fifos.close()


async def _discard(data: bytes) -> None:
    pass


async def _delete_process(task: TaskLike, exec_id: str, *, wait: bool) -> None:
    if wait:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task.wait(exec_id), 10)
    try:
        await task.delete_process(exec_id)
    except NotFound:
        pass
    except Exception as e:
        log.warning("failed to delete exec process %s: %s", exec_id, e)


async def _drain(copiers: list[asyncio.Task[None]], limit: float | None) -> bool:
    """Wait for the output copiers to reach EOF, at most ``limit`` seconds; True if they did."""
    if not copiers:
        return True
    _, pending = await asyncio.wait(copiers, timeout=limit)
    return not pending


# -- attach: follow the CRI log ------------------------------------------------------------------

class LogFollower:
    """Reads a CRI-format log file from its current end and yields ``(stream, bytes)``.

    Lines are ``<RFC3339Nano> <stdout|stderr> <P|F> <content>``; a ``P`` line's content
    is sent as is, an ``F`` line's with a newline. A log rotated away (the file at
    ``path`` replaced, ReopenContainerLog) is followed to the new file from its start.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._rest = b""

    def open_at_end(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._open(at_end=True)

    def _open(self, *, at_end: bool) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)
        if at_end:
            os.lseek(fd, st.st_size, os.SEEK_SET)
        _close(self._fd)
        self._fd, self._ino, self._rest = fd, (st.st_dev, st.st_ino), b""

    @staticmethod
    def parse(line: bytes) -> tuple[str, bytes] | None:
        parts = line.split(b" ", 3)
        if len(parts) < 3:
            return None
        stream = parts[1].decode("ascii", "replace")
        if stream not in ("stdout", "stderr"):
            return None
        content = parts[3] if len(parts) > 3 else b""
        if parts[2] == b"F":
            content += b"\n"
        return stream, content

    def read_available(self) -> list[tuple[str, bytes]]:
        """Complete lines written since the last call (blocking reads of a regular file)."""
        out: list[tuple[str, bytes]] = []
        if self._fd is None:
            try:
                self._open(at_end=False)
            except FileNotFoundError:
                return out
        assert self._fd is not None
        while True:
            data = os.read(self._fd, 1 << 16)
            if not data:
                break
            self._rest += data
        *lines, self._rest = self._rest.split(b"\n")
        for line in lines:
            parsed = self.parse(line)
            if parsed is not None:
                out.append(parsed)
        # rotated? follow the new file from its start
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) != self._ino:
                self._open(at_end=False)
                out.extend(self.read_available())
        except FileNotFoundError:
            pass
        return out

    def close(self) -> None:
        _close(self._fd)
        self._fd = None


# -- the StreamRuntime -----------------------------------------------------------------------------

@dataclass
class ExecTarget:
    """What exec/attach need of a running container (made by the ContainerRPCs mixin)."""

    id: str
    task: Any                     #: runtimes.v2.manager.Task
    process: dict[str, Any]       #: the container's OCI ``process`` object
    fifo_root: str                #: folder for exec FIFO folders
    log_path: str = ""
    stdin_path: str = ""          #: the container's stdin FIFO ("" = none)
    stdin_once: bool = False
    tty: bool = False
    exited: asyncio.Future[Any] | asyncio.Event | None = None   #: set/resolved when the container exits


class TargetSource(Protocol):
    """The CRI runtime service side :class:`CRIStreamRuntime` calls (the ContainerRPCs mixin)."""

    def exec_target(self, container_id: str) -> ExecTarget: ...
    def sandbox_netns(self, pod_sandbox_id: str) -> str: ...
    @property
    def drain_exec_io_timeout(self) -> float: ...


class CRIStreamRuntime:
    """:class:`~.streaming.StreamRuntime` over the CRI's tasks (see the module doc).

    ``source``: the runtime service — gives running containers as :class:`ExecTarget`
    (NotFound/FailedPrecondition otherwise) and sandboxes' netns paths ("" = host network).
    """

    def __init__(self, source: TargetSource) -> None:
        self.source = source

    async def exec(self, container_id: str, cmd: list[str], *, stdin: AsyncReader | None,
                   stdout: AsyncWriter | None, stderr: AsyncWriter | None, tty: bool,
                   resize: AsyncIterator[TerminalSize] | None) -> int:
        target = self.source.exec_target(container_id)
        try:
            return await run_exec(
                target.task, target.process, cmd, fifo_root=target.fifo_root, stdin=stdin,
                stdout=_writer_sink(stdout) if stdout is not None else None,
                stderr=_writer_sink(stderr) if stderr is not None else None, tty=tty, resize=resize,
                drain_timeout=self.source.drain_exec_io_timeout)
        finally:
            # the server reports the status after the streams: flush them first
            await _close_writer(stdout)
            await _close_writer(stderr)

    async def attach(self, container_id: str, *, stdin: AsyncReader | None, stdout: AsyncWriter | None,
                     stderr: AsyncWriter | None, tty: bool,
                     resize: AsyncIterator[TerminalSize] | None) -> None:
        target = self.source.exec_target(container_id)
        if stdin is not None and not target.stdin_path:
            raise FailedPrecondition(f"container {container_id} was not created with stdin")
        follower = LogFollower(target.log_path) if target.log_path else None
        if follower is not None:
            await asyncio.to_thread(follower.open_at_end)
        tasks: list[asyncio.Task[Any]] = []
        stdin_fd: int | None = None
        try:
            if stdin is not None:
                stdin_fd = await asyncio.to_thread(
                    os.open, target.stdin_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)

                async def on_eof() -> None:
                    if target.stdin_once:
                        await target.task.close_io()
                pump = asyncio.ensure_future(pump_stdin(stdin, stdin_fd, on_eof))
                tasks.append(pump)
            if tty:
                tasks.append(asyncio.ensure_future(_resize_loop(
                    resize, lambda w, h: target.task.resize_pty(w, h))))
            exited = asyncio.ensure_future(_wait_exit(target))
            out = asyncio.ensure_future(self._follow(follower, stdout, stderr, exited))
            tasks += [exited, out]
            wait_for: set[asyncio.Future[Any]] = {out}
            if stdin is not None and target.stdin_once:
                wait_for.add(tasks[0])
            await asyncio.wait(wait_for, return_when=asyncio.FIRST_COMPLETED)
            if not out.done() and stdin is not None and target.stdin_once:
                # stdin ended and was closed: the process will end; give it a moment to say so
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(out), 2)
        finally:
            await _cancel(*tasks)
            _close(stdin_fd)
            if follower is not None:
                follower.close()
            await _close_writer(stdout)
            await _close_writer(stderr)

    @staticmethod
    async def _follow(follower: LogFollower | None, stdout: AsyncWriter | None,
                      stderr: AsyncWriter | None, exited: asyncio.Future[Any]) -> None:
        if follower is None or (stdout is None and stderr is None):
            await exited
            return
        sinks = {"stdout": stdout, "stderr": stderr}
        while True:
            done = exited.done()
            for stream, data in await asyncio.to_thread(follower.read_available):
                w = sinks.get(stream)
                if w is not None:
                    w.write(data)
            for w in (stdout, stderr):
                if w is not None:
                    await w.drain()
            if done:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), LOG_POLL)

    async def port_forward(self, pod_sandbox_id: str, port: int,
                           stream: tuple[AsyncReader, AsyncWriter]) -> None:
        netns = self.source.sandbox_netns(pod_sandbox_id)
        sock = await connect_in_netns(netns, port)
        try:
            await pump_socket(sock, stream)
        finally:
            sock.close()


async def _wait_exit(target: ExecTarget) -> None:
    ev = target.exited
    if ev is None:
        await target.task.wait()
    elif isinstance(ev, asyncio.Event):
        await ev.wait()
    else:
        await asyncio.shield(ev)


def _connect_local(port: int) -> socket.socket:
    errs = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.settimeout(10)
            s.connect((host, port))
            s.setblocking(False)
            return s
        except OSError as e:
            s.close()
            errs.append(f"{'IPv4' if family == socket.AF_INET else 'IPv6'}: {e.strerror or e}")
    raise Unavailable(f"failed to connect to localhost:{port}: {'; '.join(errs)}")


async def connect_in_netns(netns: str, port: int) -> socket.socket:
    """A non-blocking TCP socket connected to ``localhost:port`` in the netns at ``netns``
    ("" = the host's). Raises Unavailable (refused), FailedPrecondition (netns gone)."""
    if not 0 < port < 65536:
        raise Unavailable(f"invalid port {port}")
    if not netns:
        return await asyncio.to_thread(_connect_local, port)
    from . import netns as netns_

    if not await asyncio.to_thread(netns_.exists, netns):
        raise FailedPrecondition(f"network namespace {netns} is closed")
    try:
        return await netns_.run_in(netns, lambda: _connect_local(port))
    except OSError as e:
        raise FailedPrecondition(f"failed to enter network namespace {netns}: {e}") from None


async def pump_socket(sock: socket.socket, stream: tuple[AsyncReader, AsyncWriter]) -> None:
    """Copy between a connected socket and the client's (reader, writer) until both directions end.

    Client EOF → ``shutdown(SHUT_WR)``, then the pod side runs until it closes; socket
    EOF → the client writer is closed and, as containerd, the client side gets one more second.
    """
    reader, writer = stream
    loop = asyncio.get_running_loop()

    async def to_pod() -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await loop.sock_sendall(sock, data)
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    async def to_client() -> None:
        try:
            while True:
                data = await loop.sock_recv(sock, CHUNK)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        finally:
            await _close_writer(writer)

    a = asyncio.ensure_future(to_pod())
    b = asyncio.ensure_future(to_client())
    try:
        await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        if not b.done():
            await asyncio.wait({b})      # the client half-closed: the pod side says when it is done
        elif not a.done():
            await asyncio.wait({a}, timeout=1.0)
        for t in (a, b):
            if t.done() and not t.cancelled() and t.exception() is not None:
                log.debug("port-forward direction ended: %s", t.exception())
    finally:
        await _cancel(a, b)
