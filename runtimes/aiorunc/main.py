"""``containerd-shim-aiorunc-v2``: the command line of our runc shim (shim API v2).

Invoked as containerd invokes every v2 shim (``pkg/shim/shim.go``)::

    SHIM = containerd-shim-aiorunc-v2 -namespace NS -address GRPC_SOCK -publish-binary BIN -id ID
    $SHIM [-debug] start
    $SHIM [-bundle DIR] delete
    $SHIM [-socket S]            # serve

Environment (set by the daemon): ``TTRPC_ADDRESS`` (daemon's ttrpc socket for
events), ``GRPC_ADDRESS``, ``NAMESPACE``, ``MAX_SHIM_VERSION``.

``start`` (cwd = bundle) follows Go's ``containerd-shim-runc-v2`` manager: the
shim socket is ``unix:///run/containerd/s/<sha256(address/namespace/group)>``
where the group is the ``io.containerd.runc.v2.group`` or
``io.kubernetes.cri.sandbox-id`` annotation of ``config.json`` (else the id).
If a shim already serves that socket its address is printed (grouping);
otherwise the socket is bound here and handed to a new serving shim, the
``address`` file is written into the bundle and the address printed (plain
``unix://…``; the JSON bootstrap form when ``MAX_SHIM_VERSION >= 3``).

The serving shim normally comes from the pre-imported fork server
(:mod:`.forkserver`): ``start`` sends it the request and the bound socket over
an abstract unix socket keyed on the daemon address and the installed shim
version; if none answers, ``start`` binds that name itself and launches the
fork server with the socket (it serves this first request, then the others);
when the fork server cannot be used a plain ``serve`` process is exec'd
(``AIORUNC_NO_FORKSERVER=1`` forces this).

``delete`` (cwd = bundle, after a failed start or a dead shim) runs
``runc delete --force``, unmounts ``<bundle>/rootfs`` and writes a
``containerd.task.v2.DeleteResponse`` (exit status 137, exited_at now, pid from
``init.pid``) to stdout, as Go's ``manager.Stop`` does.

This module imports only ``os``, ``sys``, ``socket``, ``json`` and ``_sha256``
at the top: start-up time of ``start`` is on every container's critical path.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys

try:  # the builtin module: hashlib would load OpenSSL (~8 ms)
    from _sha256 import sha256
except ImportError:  # pragma: no cover - Python >= 3.12
    from hashlib import sha256

#: version reported by ``-v``
VERSION = "0.1.0"
#: where Go's shims put their sockets (``defaults.DefaultStateDir + "/s"``)
SOCKET_ROOT = "/run/containerd/s"
#: annotations that group containers into one shim, in Go's order
GROUP_LABELS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")
_BOOL_FLAGS = {"debug", "v", "version"}
_STR_FLAGS = {"namespace", "address", "publish-binary", "id", "bundle", "socket", "debug-socket"}


class Options:
    """Parsed command line: flags (Go ``flag`` syntax) and the action.

    ``namespace``/``address`` fall back to ``NAMESPACE``/``GRPC_ADDRESS``.
    """

    def __init__(self, argv: list[str]) -> None:
        flags: dict[str, str | bool] = {}
        args: list[str] = []
        i = 0
        while i < len(argv):
            a = argv[i]
            if a == "--":
                args.extend(argv[i + 1:])
                break
            if not a.startswith("-") or a == "-":
                args.extend(argv[i:])
                break
            name = a.lstrip("-")
            value: str | bool | None = None
            if "=" in name:
                name, value = name.split("=", 1)
            if name in _BOOL_FLAGS:
                flags[name] = value is None or str(value).lower() in ("1", "t", "true")
            elif name in _STR_FLAGS:
                if value is None:
                    i += 1
                    if i >= len(argv):
                        raise SystemExit(f"flag needs an argument: -{name}")
                    value = argv[i]
                flags[name] = value
            else:
                raise SystemExit(f"flag provided but not defined: -{name}")
            i += 1
        env = os.environ
        self.namespace = str(flags.get("namespace") or env.get("NAMESPACE", ""))
        self.address = str(flags.get("address") or env.get("GRPC_ADDRESS", ""))
        self.publish_binary = str(flags.get("publish-binary", ""))
        self.id = str(flags.get("id", ""))
        self.bundle = str(flags.get("bundle", ""))
        self.socket = str(flags.get("socket", ""))
        self.debug = bool(flags.get("debug", False))
        self.version = bool(flags.get("v") or flags.get("version"))
        self.ttrpc_address = env.get("TTRPC_ADDRESS", "")
        self.action = args[0] if args else ""

    def to_request(self, bundle: str) -> dict:
        """The serve request a fork server (or a ``serve`` process) acts on."""
        return {"namespace": self.namespace, "address": self.address,
                "publish_binary": self.publish_binary, "id": self.id, "bundle": bundle,
                "debug": self.debug, "ttrpc_address": self.ttrpc_address,
                "env": dict(os.environ), "oom_score_adj": _shim_oom_score()}


def socket_address(address: str, namespace: str, group: str, *, debug: bool = False,
                   root: str = SOCKET_ROOT) -> str:
    """``unix://<root>/<sha256 hex of filepath.Join(address, namespace, group)>``.

    As Go's ``shim.SocketAddress`` (``/debug`` appended for the debug socket).
    """
    parts = [p for p in (address, namespace, group) if p]
    path = os.path.normpath("/".join(parts)) if parts else ""
    if path.startswith("//"):
        path = path[1:]
    if debug:
        path += "/debug"
    return "unix://" + root + "/" + sha256(path.encode()).hexdigest()


def read_group(bundle: str, id: str) -> str:
    """The shim group of the container: a grouping annotation of ``config.json``, else ``id``."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            annotations = json.load(f).get("annotations") or {}
    except (OSError, ValueError):
        return id
    for label in GROUP_LABELS:
        if annotations.get(label):
            return str(annotations[label])
    return id


def _can_connect(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(2)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def new_socket(path: str) -> socket.socket | None:
    """Bind and listen on the shim socket ``path`` (dir 0700, socket 0600).

    Returns ``None`` when a live shim already serves it (Go's AlreadyExists:
    grouping); a stale socket file is removed and bound again.
    """
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    for attempt in range(2):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(path)
        except OSError as e:
            s.close()
            if e.errno != 98 or attempt:  # EADDRINUSE
                raise
            if _can_connect(path):
                return None
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            continue
        os.chmod(path, 0o600)
        s.listen(128)
        return s
    return None  # pragma: no cover


def _atomic_write(path: str, data: str) -> None:
    """Write ``path`` whole or not at all; the temporary name is unique to this process
    and thread, so concurrent writers never rename each other's file away."""
    from _thread import get_ident

    tmp = f"{path}.{os.getpid()}.{get_ident()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(data)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _shim_oom_score() -> int:
    """The parent's (daemon's) ``oom_score_adj`` + 1, as Go's ``AdjustOOMScore``."""
    try:
        with open(f"/proc/{os.getppid()}/oom_score_adj") as f:
            return min(int(f.read().strip()) + 1, 1000)
    except (OSError, ValueError):
        return 0


def forkserver_key(address: str) -> str:
    """Abstract socket name of the fork server for daemon ``address`` and this installation.

    The key covers the interpreter and the mtime/size of this package's modules, so a
    reinstalled or edited shim never talks to a stale fork server.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    h = sha256()
    h.update(f"{address}\0{sys.executable}\0{VERSION}\0".encode())
    try:
        with os.scandir(here) as it:
            for e in sorted(it, key=lambda e: e.name):
                if e.name.endswith(".py"):
                    st = e.stat()
                    h.update(f"{e.name}:{st.st_mtime_ns}:{st.st_size};".encode())
    except OSError:
        pass
    return "\0aiorunc-forkserver-" + h.hexdigest()[:40]


class _Dropped(Exception):
    """The fork server closed the connection without forking (it was exiting)."""


def _request_forkserver(conn: socket.socket, req: dict, sock: socket.socket,
                        timeout: float) -> int:
    """Send one serve request plus the bound shim socket; return the new shim's pid.

    Raises :class:`_Dropped` when the fork server went away before answering (an
    idle or orphaned one exiting with our connection in its backlog): no shim was
    forked, ask again.
    """
    conn.settimeout(timeout)
    data = json.dumps(req).encode()
    try:
        socket.send_fds(conn, [data], [sock.fileno()])
        reply = conn.recv(4096)
    except (ConnectionResetError, BrokenPipeError) as e:
        raise _Dropped() from e
    return _forkserver_pid(reply)


def _forkserver_pid(reply: bytes) -> int:
    """The new shim's pid from the fork server's answer to a serve request.

    Raises :class:`_Dropped` for an empty answer (it went away without forking) and
    OSError carrying its error otherwise.
    """
    if not reply:
        raise _Dropped()
    answer = json.loads(reply)
    if "pid" not in answer:
        raise OSError(f"fork server: {answer.get('error', answer)}")
    return int(answer["pid"])


def _connect_forkserver(key: str) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(key)
        return conn
    except OSError:
        conn.close()
        return None


#: fd numbers the sources of a :func:`_detached_exec` mapping pass through, so that
#: mapping one fd never overwrites another still to be mapped
_SPARE_FD = 200


def _detached_exec(argv: list[str], fds: dict[int, int]) -> None:
    """Run ``argv`` detached: its own session, stdio on /dev/null, our fd ``fds[t]`` as its
    fd ``t`` (every other fd of ours is made close-on-exec first), re-parented at once.

    Started by ``posix_spawn`` (fork and exec done in C) of ``sh -c '"$@" &'``, which starts
    it in the background and exits; that is all we wait for. No Python runs in a copy of
    the caller between fork and exec: the caller may be the daemon (warming the fork
    server), whose other threads and whose root/state lock fds a forked copy would hold.
    """
    # nothing else of ours is passed on: an fd opened without O_CLOEXEC (LMDB opens its
    # files so, in the daemon) becomes close-on-exec here; one closed meanwhile is skipped
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in fds.values():
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
    actions: list[tuple] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0),
                            (os.POSIX_SPAWN_DUP2, 0, 1), (os.POSIX_SPAWN_DUP2, 0, 2)]
    actions += [(os.POSIX_SPAWN_DUP2, f, _SPARE_FD + t) for t, f in fds.items()]
    for t in fds:
        actions += [(os.POSIX_SPAWN_DUP2, _SPARE_FD + t, t), (os.POSIX_SPAWN_CLOSE, _SPARE_FD + t)]
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", '"$@" &', "sh", *argv], os.environ,
                         file_actions=actions, setsid=True)
    os.waitpid(pid, 0)


def _python() -> list[str]:
    return [sys.executable, "-P"]


def _bind_and_launch(key: str, req: dict, sock: socket.socket | None) -> bool | None:
    """Bind the fork server's abstract name ``key`` and launch it (fd 3: ``sock``, when
    given, is the first shim it forks; fd 4: the bound listener; fd 5: ``req``).

    True when launched, False when the name is taken (a fork server listens, or a
    concurrent ``start`` is launching one), None when the launch itself failed.
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listener.bind(key)
        listener.listen(512)
    except OSError:
        listener.close()
        return False
    memfd = -1
    try:
        memfd = os.memfd_create("aiorunc-request")
        os.write(memfd, json.dumps(req).encode())
        os.lseek(memfd, 0, os.SEEK_SET)
        fds = {4: listener.fileno(), 5: memfd}
        if sock is not None:
            fds[3] = sock.fileno()
        _detached_exec([*_python(), "-m", "aiocontainerd.runtimes.aiorunc.forkserver"], fds)
        return True
    except OSError:
        return None
    finally:
        listener.close()
        if memfd >= 0:
            os.close(memfd)


def warm_forkserver(address: str, ttrpc_address: str, env: dict[str, str]) -> bool:
    """Launch the fork server of daemon ``address`` now, with no shim to fork yet, so that
    the first container does not pay its start (~0.2 s of imports). Its lifetime is as
    usual (idle timeout, exits when the daemon is gone). False when one already listens
    or it could not be launched."""
    key = forkserver_key(address)
    req = {"warm": True, "address": address, "ttrpc_address": ttrpc_address, "env": env,
           "forkserver": key}
    conn = _connect_forkserver(key)
    if conn is not None:
        conn.close()
        return False
    return bool(_bind_and_launch(key, req, None))


def launch(opts: Options, req: dict, sock: socket.socket) -> int | None:
    """Hand the bound shim socket ``sock`` to a new serving shim; its pid if known."""
    if os.environ.get("AIORUNC_NO_FORKSERVER") not in (None, "", "0"):
        return _launch_plain(opts, sock)
    key = forkserver_key(opts.address)
    req["forkserver"] = key
    timeout = float(os.environ.get("AIORUNC_FORKSERVER_TIMEOUT", "20"))
    for _attempt in range(50):
        conn = _connect_forkserver(key)
        if conn is None:
            launched = _bind_and_launch(key, req, sock)
            if launched is None:
                return _launch_plain(opts, sock)
            if launched:
                return None
            # a concurrent start bound it just now: let it listen, then ask it
            import time
            time.sleep(0.01)
            continue
        try:
            return _request_forkserver(conn, req, sock, timeout)
        except _Dropped:
            continue
        except (OSError, ValueError):
            return _launch_plain(opts, sock)
        finally:
            conn.close()
    return _launch_plain(opts, sock)


def _launch_plain(opts: Options, sock: socket.socket) -> None:
    """Exec a plain ``serve`` process (Go's way) with the socket as fd 3."""
    argv = [*_python(), "-m", "aiocontainerd.runtimes.aiorunc.main", "-namespace", opts.namespace,
            "-id", opts.id, "-address", opts.address,
            "-publish-binary", opts.publish_binary]
    if opts.debug:
        argv.append("-debug")
    _detached_exec(argv, {3: sock.fileno()})
    return None


def start(opts: Options) -> int:
    """The ``start`` action: print the (possibly shared) shim address; see module doc."""
    bundle = os.getcwd()
    group = read_group(bundle, opts.id)
    address = socket_address(opts.address, opts.namespace, group)
    sock = new_socket(address[len("unix://"):])
    if sock is not None:
        try:
            pid = launch(opts, opts.to_request(bundle), sock)
        finally:
            sock.close()
        if pid:
            _atomic_write(os.path.join(bundle, "shim.pid"), str(pid))
    _atomic_write(os.path.join(bundle, "address"), address)
    try:
        max_version = int(os.environ.get("MAX_SHIM_VERSION") or 0)
    except ValueError:
        max_version = 0
    if max_version >= 3:
        out = json.dumps({"version": 3, "address": address, "protocol": "ttrpc"})
    else:
        out = address
    sys.stdout.write(out)
    sys.stdout.flush()
    return 0


def delete(opts: Options) -> int:
    """The ``delete`` action (Go's ``manager.Stop``): clean up after a dead shim."""
    from .cleanup import delete_bundle

    bundle = opts.bundle or os.getcwd()
    data = delete_bundle(bundle, opts.id, opts.namespace)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return 0


def serve(opts: Options) -> int:
    """Serve the task API on ``-socket`` or the listening socket inherited as fd 3."""
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type] - see forkserver.preimport
    from .shim import ShimConfig, run

    if opts.socket:
        path = opts.socket[len("unix://"):] if opts.socket.startswith("unix://") else opts.socket
        sock = new_socket(path)
        if sock is None:
            return 1
    else:
        sock = socket.socket(fileno=3)
    cfg = ShimConfig(namespace=opts.namespace, id=opts.id, address=opts.address,
                     ttrpc_address=opts.ttrpc_address, publish_binary=opts.publish_binary,
                     bundle=os.getcwd(), debug=opts.debug, oom_score_adj=None)
    return run(cfg, sock)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; exits with the action's status."""
    opts = Options(sys.argv[1:] if argv is None else argv)
    if opts.version:
        print(f"containerd-shim-aiorunc-v2:\n  Version:  {VERSION}\n  Runtime:  aiocontainerd")
        sys.exit(0)
    if opts.action == "start":
        if not opts.namespace:
            sys.exit("shim namespace cannot be empty")
        sys.exit(start(opts))
    if opts.action == "delete":
        sys.exit(delete(opts))
    if opts.action == "":
        sys.exit(serve(opts))
    sys.exit(f"unknown action {opts.action!r}")


if __name__ == "__main__":
    main()
