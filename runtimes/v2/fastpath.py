"""``containerd-shim-aiorunc-v2 start`` without the subprocess, when the shim is our own.

``<shim> start`` of our shim (:func:`aiocontainerd.runtimes.aiorunc.main.start`) does
little: bind the shim socket, hand it to the pre-imported fork server over an abstract
unix socket, write ``address`` (and ``shim.pid``) into the bundle and print the
address. Run as a process it costs a Python interpreter start (~35 ms of CPU) on
every container's critical path; here the daemon does the same steps itself, with
the same helpers, on its event loop (the fork server reply is awaited, not blocked
on). The shim is still forked by the fork server into its own session: it outlives
the daemon and is adopted after a restart exactly as before.

Used only when the resolved binary is the ``containerd-shim-aiorunc-v2`` console
script of this very installation (same interpreter, so the fork server key and the
shim code are the ones ``start`` would use). Whenever a step cannot be done here
(no fork server running yet, it failed or timed out, ``AIORUNC_NO_FORKSERVER`` set,
``AIOCONTAINERD_SHIM_START=exec``) the caller runs the real ``<shim> start``, which
launches the fork server or a plain ``serve`` process as it always has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys

from .binary import AIORUNC_SHIM, ShimCommand, StartResult

log = logging.getLogger(__name__)

#: ``AIOCONTAINERD_SHIM_START=exec`` turns the fast path off (always run ``<shim> start``)
ENV_SWITCH = "AIOCONTAINERD_SHIM_START"
#: seconds to wait for the fork server's answer (the subprocess ``start`` uses 20)
DEFAULT_TIMEOUT = 20.0

def is_our_shim(binary: str) -> bool:
    """Whether ``binary`` is this installation's ``containerd-shim-aiorunc-v2`` script
    (its shebang names our interpreter and it runs our shim's ``main``). One read of the
    script's first 4 KiB (a small file in the page cache: cheap enough for the loop)."""
    if os.path.basename(binary) != AIORUNC_SHIM:
        return False
    try:
        with open(binary, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    first, _, rest = head.partition(b"\n")
    interp = first[2:].strip().split(b" ")[0] if first.startswith(b"#!") else b""
    # the very interpreter path: another venv on the same base Python is another install
    return (bool(interp) and os.path.abspath(os.fsdecode(interp)) == os.path.abspath(sys.executable)
            and b"aiocontainerd.runtimes.aiorunc.main" in rest)


def enabled(binary: str, env: dict[str, str]) -> bool:
    """Whether ``start`` of ``binary`` may run in-process with the shim environment ``env``."""
    if env.get(ENV_SWITCH, "").lower() == "exec":
        return False
    if env.get("AIORUNC_NO_FORKSERVER") not in (None, "", "0"):
        return False
    return is_our_shim(binary)


def _own_oom_score() -> int:
    """Our (the daemon's) ``oom_score_adj`` + 1: what ``start`` gives the shim (its parent's + 1)."""
    try:
        with open("/proc/self/oom_score_adj") as f:
            return min(int(f.read().strip()) + 1, 1000)
    except (OSError, ValueError):
        return 0


async def _send(conn: socket.socket, data: bytes, fd: int) -> None:
    from aiocontainerd.tasks import wait_fd

    while True:
        try:
            socket.send_fds(conn, [data], [fd])
            return
        except BlockingIOError:
            await wait_fd(conn.fileno(), write=True)


async def _ask_forkserver(key: str, req: dict, sock: socket.socket, limit: float) -> int | None:
    """One serve request to the fork server at ``key``; the new shim's pid.

    None when no fork server listens (or it went away without forking: it was
    exiting). Raises OSError/ValueError/TimeoutError when it failed.
    """
    from aiocontainerd.runtimes.aiorunc.main import _Dropped, _forkserver_pid

    loop = asyncio.get_running_loop()
    data = json.dumps(req).encode()
    for _attempt in range(50):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC)
        try:
            try:
                conn.connect(key)
            except (ConnectionRefusedError, FileNotFoundError):
                return None
            except BlockingIOError:   # its backlog is full: ask again shortly
                await asyncio.sleep(0.005)
                continue
            try:
                await _send(conn, data, sock.fileno())
                async with asyncio.timeout(limit):
                    reply = await loop.sock_recv(conn, 4096)
            except (ConnectionResetError, BrokenPipeError):
                raise _Dropped() from None
            return _forkserver_pid(reply)
        except _Dropped:
            continue
        finally:
            conn.close()
    return None


def _where(command: ShimCommand) -> tuple[str, str, str, bool]:
    """The bundle as ``start`` sees it (its cwd, resolved), the shim address of its group,
    that socket's path and whether a file is there already (a few fast syscalls)."""
    from aiocontainerd.runtimes.aiorunc import main as shimmain

    bundle = os.path.realpath(command.bundle)
    group = shimmain.read_group(bundle, command.id)
    address = shimmain.socket_address(command.grpc_address, command.namespace, group)
    path = address[len("unix://"):]
    return bundle, address, path, os.path.lexists(path)


async def start(command: ShimCommand) -> StartResult | None:
    """``<shim> start`` of our shim, done here; None when the caller must run the binary
    (not our shim, fast path switched off, or the fork server could not be used).

    Same files, same shim, same address as the subprocess would produce.
    """
    env = command.environ()
    if not enabled(command.binary, env):
        return None
    from aiocontainerd.runtimes.aiorunc import main as shimmain

    bundle, address, path, exists = _where(command)
    if exists:
        # an existing socket: a live shim of the group (a connect), or a stale file
        sock = await asyncio.to_thread(shimmain.new_socket, path)
    else:
        sock = shimmain.new_socket(path)
    if sock is not None:
        key = shimmain.forkserver_key(command.grpc_address)
        argv = command.argv("start")
        req = {"namespace": command.namespace, "address": command.grpc_address,
               "publish_binary": argv[argv.index("-publish-binary") + 1], "id": command.id,
               "bundle": bundle, "debug": command.debug, "ttrpc_address": command.ttrpc_address,
               "env": env, "oom_score_adj": _own_oom_score(), "forkserver": key}
        try:
            timeout = float(env.get("AIORUNC_FORKSERVER_TIMEOUT") or DEFAULT_TIMEOUT)
        except ValueError:
            timeout = DEFAULT_TIMEOUT
        pid = None
        try:
            pid = await _ask_forkserver(key, req, sock, timeout)
        except (OSError, ValueError, TimeoutError) as e:
            log.debug("fork server request failed; running shim start",
                      extra={"fields": {"id": command.id, "error": str(e)}})
        finally:
            sock.close()
        if pid is None:
            # nobody took the socket: leave no bound file for the real ``start``
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        shimmain._atomic_write(os.path.join(bundle, "shim.pid"), str(pid))
    shimmain._atomic_write(os.path.join(bundle, "address"), address)
    try:
        max_version = int(env.get("MAX_SHIM_VERSION") or 0)
    except ValueError:
        max_version = 0
    return StartResult(address, 3) if max_version >= 3 else StartResult(address)


async def warm(command: ShimCommand) -> bool:
    """Start our shim's fork server ahead of the first container (the daemon calls this
    once it is up): the first ``start`` then finds it warm instead of paying ~0.2 s of
    imports. Only when ``command.binary`` is our shim and the fast path is on; the fork
    server keeps its usual lifetime (idle timeout, exits with the daemon). True when one
    was launched; raises OSError when launching failed."""
    env = command.environ()
    if not command.grpc_address or not enabled(command.binary, env):
        return False
    from aiocontainerd.runtimes.aiorunc import main as shimmain

    return await asyncio.to_thread(shimmain.warm_forkserver, command.grpc_address,
                                   command.ttrpc_address, env)

