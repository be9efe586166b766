"""The shim's ``delete`` action: clean up a bundle whose shim failed or died.

Follows Go's ``containerd-shim-runc-v2`` ``manager.Stop``: read the runtime
binary (``<bundle>/runtime``) and options (``<bundle>/options.json``) that
Create wrote, run ``<runtime> --root <root>/<namespace> delete --force <id>``,
unmount ``<bundle>/rootfs`` recursively, remove the shim's socket when nothing
listens on it any more (a killed shim cannot remove it itself; Go's shim leaves
it behind) and answer a
``containerd.task.v2.DeleteResponse`` with exit status ``128 + SIGKILL``,
``exited_at`` now and the pid from ``<bundle>/init.pid`` (0 when unreadable).
Errors of the runtime or the unmount are logged to stderr, not fatal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

OPTIONS_FILE = "options.json"
RUNTIME_FILE = "runtime"


def read_runtime(bundle: str) -> tuple[str, str, bool]:
    """``(binary, root, systemd_cgroup)`` recorded in the bundle by Create (defaults if absent)."""
    binary, root, systemd = "runc", "", False
    try:
        with open(os.path.join(bundle, RUNTIME_FILE)) as f:
            binary = f.read().strip() or binary
    except OSError:
        pass
    try:
        with open(os.path.join(bundle, OPTIONS_FILE)) as f:
            opts = json.load(f) or {}
        root = opts.get("root") or ""
        systemd = bool(opts.get("systemd_cgroup"))
        binary = opts.get("binary_name") or binary
    except (OSError, ValueError, AttributeError):
        pass
    return binary, root, systemd


def delete_bundle(bundle: str, id: str, namespace: str) -> bytes:
    """Force-delete container ``id`` of ``bundle``; the serialized DeleteResponse."""
    from aiocontainerd import errors
    from aiocontainerd.api.containerd.task.v2 import DeleteResponse
    from aiocontainerd.mount.mounting import unmount_blocking

    from .publisher import timestamp
    from .runc import INIT_PID_FILE, RUNC_ROOT, read_pid_file

    binary, root, systemd = read_runtime(bundle)
    argv = [binary, "--root", os.path.join(root or RUNC_ROOT, namespace),
            "--log", os.path.join(bundle, "log.json"), "--log-format", "json"]
    if systemd:
        argv.append("--systemd-cgroup")
    argv += ["delete", "--force", id]
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        if r.returncode and b"does not exist" not in r.stderr:
            sys.stderr.write(f"failed to remove runc container: {r.stderr.decode(errors='replace')}\n")
    except (OSError, subprocess.SubprocessError) as e:
        sys.stderr.write(f"failed to remove runc container: {e}\n")
    try:
        unmount_blocking(os.path.join(bundle, "rootfs"), recursive=True)
    except OSError as e:
        sys.stderr.write(f"failed to cleanup rootfs mount: {e}\n")
    remove_dead_socket(bundle)
    pid = 0
    with contextlib.suppress(OSError, errors.ContainerdError):
        pid = read_pid_file(os.path.join(bundle, INIT_PID_FILE))
    return bytes(DeleteResponse(pid=pid, exit_status=128 + signal.SIGKILL, exited_at=timestamp()))


def remove_dead_socket(bundle: str) -> None:
    """Unlink the socket named by ``<bundle>/address`` when no shim accepts on it.

    The socket may be shared by the containers of a group (one shim per pod): it is
    removed only when the connection is refused, i.e. its shim is gone for all of them.
    """
    import socket

    try:
        with open(os.path.join(bundle, "address")) as f:
            address = f.read().strip()
    except OSError:
        return
    if not address.startswith("unix://"):
        return
    path = address[len("unix://"):]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(1)
        s.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)
        except OSError:
            pass
    except OSError:
        pass   # absent, or busy (a live shim with a full backlog): leave it
    finally:
        s.close()

