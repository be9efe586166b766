"""Receiver of the pty master a runtime sends over ``--console-socket``.

For a process with ``terminal: true`` runc creates the pty inside the
container and sends the master fd over the unix socket named by
``--console-socket`` (one ``SCM_RIGHTS`` message whose data is the pty's name),
as go-runc's ``NewTempConsoleSocket``/``ReceiveMaster`` expect.  The shim then
copies between the master and the client's FIFOs
(:meth:`~.stdio.ProcessIO.attach_console`).

Example::

    sock = await ConsoleSocket.create()
    await runc.create(id, bundle, pid_file=..., console_socket=sock, stdio=pio)
    master = await sock.receive_master()
    sock.close()
    await pio.attach_console(master)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import socket
import struct
import termios

from aiocontainerd.tasks import wait_fd

#: unix socket paths must fit sockaddr_un.sun_path (108 bytes with the NUL)
MAX_SOCKET_PATH = 107


class ConsoleSocket:
    """A listening ``AF_UNIX`` stream socket for ``--console-socket``; ``path`` is its address.

    The runtime connects (the listen backlog takes it even before
    :meth:`receive_master` runs, so ``runc create`` never waits on us), sends
    the master fd and closes.
    """

    def __init__(self, sock: socket.socket, path: str, tmpdir: str | None) -> None:
        self._sock = sock
        self.path = path
        self._tmpdir = tmpdir
        self.name = ""   # the pty's name sent along with the fd, e.g. "/dev/pts/0"

    @classmethod
    async def create(cls, dir: str | None = None) -> ConsoleSocket:
        """Listen on ``<dir>/pty<random>.sock``, or in a fresh private temp dir when ``dir`` is None.

        Raises ``OSError`` when the socket cannot be bound and ``ValueError``
        when the path would exceed the 107-byte unix socket limit.
        """
        tmpdir = None
        if dir is None:
            import tempfile

            dir = tmpdir = tempfile.mkdtemp(prefix="pty")
        path = os.path.join(dir, f"pty{os.urandom(6).hex()}.sock")
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            if tmpdir:
                shutil.rmtree(tmpdir, ignore_errors=True)
            raise ValueError(f"console socket path too long: {path}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(1)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            if tmpdir:
                shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        return cls(sock, path, tmpdir)

    async def receive_master(self) -> int:
        """Accept the runtime's connection and return the pty master fd it sent.

        The fd is ours to close (made close-on-exec; blocking mode as sent).  Raises
        ``ConnectionError`` when the peer closes without sending an fd.
        Cancel it (or use ``asyncio.wait_for``) to give up.
        """
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self._sock)
        with conn:
            conn.setblocking(False)
            while True:
                try:
                    msg, fds = _recv_fd(conn)
                except BlockingIOError:
                    await wait_fd(conn.fileno(), write=False)
                    continue
                if not fds:
                    raise ConnectionError("console socket: no pty master received")
                for extra in fds[1:]:
                    os.close(extra)
                os.set_inheritable(fds[0], False)
                self.name = msg.decode("utf-8", "replace").rstrip("\0")
                return fds[0]

    def close(self) -> None:
        """Stop listening and remove the socket file (and the temp dir ``create`` made)."""
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> ConsoleSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recv_fd(conn: socket.socket) -> tuple[bytes, list[int]]:
    msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4)
    if not msg and not fds:
        raise ConnectionError("console socket closed before a pty master was sent")
    return msg, fds


def set_winsize(fd: int, width: int, height: int) -> None:
    """``TIOCSWINSZ`` on a tty fd: ``width`` columns by ``height`` rows (characters)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


__all__ = ["ConsoleSocket", "set_winsize"]
