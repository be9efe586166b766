"""The shim's reaper: the only code in the shim that calls ``waitpid``.

The shim makes itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``,
as containerd's ``pkg/sys/reaper`` does), so a container's init process, whose
parent ``runc create`` exits at once, is re-parented to the shim and its exit
status reaches the shim.  On every ``SIGCHLD`` the reaper calls
``os.waitpid(-1, WNOHANG)`` until nothing is left and hands each
``(pid, status)`` to the futures of :meth:`Reaper.watch` and to the callbacks of
:meth:`Reaper.subscribe`.

Exit status: the process's exit code, or ``128 + signal`` for a process killed
by a signal (what Go's shim reports in ``TaskExit.exit_status``).

Processes are spawned by :meth:`Reaper.spawn` (``subprocess.Popen`` underneath,
for its fast vfork/exec path), never through asyncio's child watchers, which
would race with ``waitpid(-1)``.  The ``Popen`` object is kept until the reaper
has collected the exit and then given the return code, so ``Popen`` never waits
on its own.  Code running inside the shim must not use
``asyncio.create_subprocess_*``, ``subprocess.run`` or ``os.wait*``: use
:meth:`Reaper.spawn` and :meth:`Reaper.watch`.

Example::

    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    child = await reaper.spawn(["runc", "state", "c1"], stdout=PIPE, stderr=STDOUT)
    out, _ = await child.communicate()
    status = await child.wait()          # 0
    exit_status = await reaper.watch(container_pid)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence

PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT
DEVNULL = subprocess.DEVNULL

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37

#: how many exits of processes nobody watched yet are remembered
REMEMBERED_EXITS = 4096


def exit_status(wait_status: int) -> int:
    """Turn a raw ``waitpid`` status into the shim's exit status.

    The exit code for a process that exited, ``128 + signal number`` for one
    killed by a signal (so SIGKILL gives 137), as containerd's shim reports.
    """
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    return 255


def _prctl(option: int, value: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if option == PR_GET_CHILD_SUBREAPER:
        out = ctypes.c_int(0)
        if libc.prctl(option, ctypes.byref(out), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return out.value
    if libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return 0


def set_subreaper(enable: bool = True) -> None:
    """Make this process a child subreaper (``PR_SET_CHILD_SUBREAPER``), or undo it.

    Raises ``OSError`` if the kernel refuses (Linux < 3.4).
    """
    _prctl(PR_SET_CHILD_SUBREAPER, 1 if enable else 0)


def is_subreaper() -> bool:
    """Whether this process is a child subreaper (``PR_GET_CHILD_SUBREAPER``)."""
    return bool(_prctl(PR_GET_CHILD_SUBREAPER, 0))


class Child:
    """A process started by :meth:`Reaper.spawn`.

    ``stdin`` is an ``asyncio.StreamWriter`` and ``stdout``/``stderr`` are
    ``asyncio.StreamReader`` when ``PIPE`` was asked for, else ``None``.
    ``returncode`` is the exit status (see :func:`exit_status`) once reaped.
    """

    def __init__(self, reaper: Reaper, pid: int, exited: asyncio.Future[int]) -> None:
        self.pid = pid
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._reaper = reaper
        self._exited = exited

    @property
    def returncode(self) -> int | None:
        """The exit status once the reaper collected it, else ``None``."""
        if self._exited.done() and not self._exited.cancelled():
            return self._exited.result()
        return None

    async def wait(self) -> int:
        """Wait for the process to exit; its exit status (code, or 128+signal)."""
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` unless the process has been reaped already (no pid reuse race)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process (if it still runs)."""
        self.send_signal(signal.SIGKILL)

    async def communicate(self, input: bytes | None = None) -> tuple[bytes, bytes]:
        """Feed ``input`` to stdin (then close it), read stdout/stderr to EOF, wait.

        Returns ``(stdout, stderr)``, ``b""`` for a stream that is not a ``PIPE``.
        """

        async def feed() -> None:
            if self.stdin is None:
                return
            try:
                if input:
                    self.stdin.write(input)
                    await self.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                self.stdin.close()

        async def read(stream: asyncio.StreamReader | None) -> bytes:
            return b"" if stream is None else await stream.read()

        _, out, err = await asyncio.gather(feed(), read(self.stdout), read(self.stderr))
        await self.wait()
        return out, err


def _alive(pid: int) -> bool:
    """Whether a process (a zombie included) has ``pid`` now."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _popen(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    # fork/exec only: Popen blocks just until the exec succeeded or failed (a
    # few hundred microseconds with vfork); it is never asked to wait.
    return subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]


def _posix_spawn(argv: list[str], executable: str | None, stdin: int | None,
                 stdout: int | None, stderr: int | None, env: Mapping[str, str],
                 fd_map: Mapping[int, int], setsid: bool) -> int:
    """posix_spawn (vfork+exec in glibc) with fds renumbered as ``fd_map`` says."""
    wanted: dict[int, int] = dict(fd_map)
    devnull = None
    for num, fd in ((0, stdin), (1, stdout), (2, stderr)):
        if fd == DEVNULL:
            if devnull is None:
                devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            wanted[num] = devnull
        elif fd == STDOUT:
            wanted[num] = wanted.get(1, 1)
        elif fd is not None and fd >= 0:
            wanted[num] = fd
    # Move every source above every target first, so one dup2 cannot clobber
    # the source of another; these copies are close-on-exec.
    floor = max([*wanted, 2]) + 1
    high: list[int] = []
    try:
        actions = []
        for num, fd in wanted.items():
            dup = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
            high.append(dup)
            actions.append((os.POSIX_SPAWN_DUP2, dup, num))
        path = executable or argv[0]
        spawn = os.posix_spawn if os.sep in path else os.posix_spawnp
        return spawn(path, argv, env, file_actions=actions, setsid=setsid)
    finally:
        for fd in high:
            os.close(fd)
        if devnull is not None:
            os.close(devnull)


class _PipeReaderProtocol(asyncio.StreamReaderProtocol):
    pass


class Reaper:
    """Collects the exit of every child of the shim; see the module docstring.

    Lifecycle: ``install(loop)`` once in the shim (it sets the subreaper flag and
    the SIGCHLD handler), then ``spawn``/``watch``/``subscribe`` from that loop;
    ``uninstall()`` undoes both (tests).
    """

    def __init__(self, *, remembered: int = REMEMBERED_EXITS) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchers: dict[int, list[asyncio.Future[int]]] = {}
        self._subscribers: list[Callable[[int, int], None]] = []
        self._exits: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._remembered = remembered
        self._popens: dict[int, subprocess.Popen[bytes]] = {}
        self._subreaper = False

    # -- installation ---------------------------------------------------------

    def install(self, loop: asyncio.AbstractEventLoop | None = None, *,
                subreaper: bool = True) -> None:
        """Become a child subreaper and handle SIGCHLD on ``loop`` (the running one if None).

        Reaps whatever already exited right away.  Must run in the main thread
        (``loop.add_signal_handler``).  Raises ``OSError`` if prctl fails.
        """
        self._loop = loop or asyncio.get_running_loop()
        if subreaper:
            set_subreaper(True)
            self._subreaper = True
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()

    def uninstall(self) -> None:
        """Remove the SIGCHLD handler and clear the subreaper flag set by ``install``."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_signal_handler(signal.SIGCHLD)
        if self._subreaper:
            set_subreaper(False)
            self._subreaper = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # -- reaping ---------------------------------------------------------------

    def reap(self) -> list[tuple[int, int]]:
        """Collect every exited child now (``waitpid(-1, WNOHANG)`` until none).

        Called by the SIGCHLD handler; returns the ``(pid, exit status)`` pairs
        dispatched.
        """
        reaped: list[tuple[int, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            reaped.append((pid, exit_status(status)))
        for pid, status in reaped:
            self._dispatch(pid, status)
        return reaped

    def _dispatch(self, pid: int, status: int) -> None:
        popen = self._popens.pop(pid, None)
        if popen is not None:
            popen.returncode = status
        futures = self._watchers.pop(pid, None)
        if futures:
            for fut in futures:
                if not fut.done():
                    fut.set_result(status)
        self._exits[pid] = status
        self._exits.move_to_end(pid)
        while len(self._exits) > self._remembered:
            self._exits.popitem(last=False)
        for cb in list(self._subscribers):
            try:
                cb(pid, status)
            except Exception as exc:  # a bad subscriber must not stop reaping
                self.loop.call_exception_handler({
                    "message": "reaper subscriber failed", "exception": exc})

    # -- API -------------------------------------------------------------------

    def watch(self, pid: int) -> asyncio.Future[int]:
        """A future resolving to the exit status of ``pid`` (a child or re-parented process).

        If ``pid`` exited before this call (and is among the last
        ``REMEMBERED_EXITS`` exits) the future is already done, unless a process
        with that pid exists now (then the remembered exit is of an earlier
        process and the future waits for the current one).  Cancelling the
        future only drops this watcher.
        """
        fut: asyncio.Future[int] = self.loop.create_future()
        if pid in self._exits:
            if _alive(pid):
                # the remembered exit belongs to an earlier process with this pid
                # (pid reuse); a live or not yet reaped one is the one meant now
                del self._exits[pid]
            else:
                fut.set_result(self._exits[pid])
                return fut
        self._watchers.setdefault(pid, []).append(fut)
        return fut

    def exited(self, pid: int) -> int | None:
        """The remembered exit status of ``pid``, or ``None``."""
        return self._exits.get(pid)

    def forget(self, pid: int) -> None:
        """Drop the remembered exit of ``pid`` (once it is consumed, against pid reuse)."""
        self._exits.pop(pid, None)

    def subscribe(self, cb: Callable[[int, int], None]) -> Callable[[], None]:
        """Call ``cb(pid, exit_status)`` for every process reaped from now on.

        Called synchronously from the SIGCHLD handler on the loop, in reap order.
        Returns a function that unsubscribes.
        """
        self._subscribers.append(cb)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(cb)

        return unsubscribe

    async def spawn(self, argv: Sequence[str], *, stdin: int | None = None,
                    stdout: int | None = None, stderr: int | None = None,
                    env: Mapping[str, str] | None = None, cwd: str | None = None,
                    pass_fds: Iterable[int] = (), start_new_session: bool = False,
                    executable: str | None = None,
                    fd_map: Mapping[int, int] | None = None) -> Child:
        """Start ``argv`` as a child of the shim; its exit is collected by this reaper.

        ``stdin``/``stdout``/``stderr``: ``None`` (inherit), ``PIPE`` (async
        stream on the returned :class:`Child`), ``DEVNULL``, an open fd, or for
        ``stderr`` also ``STDOUT``.  ``pass_fds`` stay open in the child under
        the same numbers; every other fd is closed.  ``fd_map`` maps fd numbers
        in the child to our fds (``{3: r1, 4: r2, 5: w}`` for a binary logger;
        runs through ``os.posix_spawn``, so no ``cwd``/``pass_fds`` with it).
        ``env`` replaces the environment.  Raises ``OSError`` (e.g. ``FileNotFoundError``) if the
        program cannot be executed.
        """
        loop = self.loop
        to_close: list[int] = []
        ours: dict[str, int] = {}
        try:
            if stdin == PIPE:
                r, w = os.pipe()
                to_close.append(r)
                ours["stdin"] = w
                stdin = r
            if stdout == PIPE:
                r, w = os.pipe()
                to_close.append(w)
                ours["stdout"] = r
                stdout = w
            if stderr == PIPE:
                r, w = os.pipe()
                to_close.append(w)
                ours["stderr"] = r
                stderr = w
            elif stderr == STDOUT and stdout is None:
                stderr = None
            if fd_map:
                if cwd is not None or tuple(pass_fds):
                    raise ValueError("spawn: fd_map excludes cwd and pass_fds")
                pid = _posix_spawn(list(argv), executable, stdin, stdout, stderr,
                                   os.environ if env is None else env, fd_map,
                                   start_new_session)
                popen = None
            else:
                popen = _popen(list(argv), executable=executable, stdin=stdin, stdout=stdout,
                               stderr=stderr, env=dict(env) if env is not None else None,
                               cwd=cwd, pass_fds=tuple(pass_fds), close_fds=True,
                               start_new_session=start_new_session)
                pid = popen.pid
        except BaseException:
            for fd in (*to_close, *ours.values()):
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        for fd in to_close:
            os.close(fd)
        # A remembered exit under this pid belongs to an earlier process.
        self._exits.pop(pid, None)
        if popen is not None:
            self._popens[pid] = popen
        fut = self.watch(pid)
        child = Child(self, pid, fut)
        try:
            if "stdin" in ours:
                transport, protocol = await loop.connect_write_pipe(
                    asyncio.streams.FlowControlMixin, os.fdopen(ours.pop("stdin"), "wb", 0))
                child.stdin = asyncio.StreamWriter(transport, protocol, None, loop)
            for name in ("stdout", "stderr"):
                if name in ours:
                    reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
                    await loop.connect_read_pipe(
                        lambda reader=reader: _PipeReaderProtocol(reader, loop=loop),
                        os.fdopen(ours.pop(name), "rb", 0))
                    setattr(child, name, reader)
        except BaseException:
            for fd in ours.values():
                os.close(fd)
            raise
        return child


__all__ = ["DEVNULL", "PIPE", "STDOUT", "Child", "Reaper", "exit_status", "is_subreaper",
           "set_subreaper"]
