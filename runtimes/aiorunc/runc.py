"""Async client of an OCI runtime CLI (``runc``; ``crun`` and ``runsc`` share its flags).

Follows containerd's ``go-runc`` library as the Go runc shim uses it: every
command runs as ``<binary> --root <root> [--debug] --log <log> --log-format json
[--systemd-cgroup] <command> ...`` with ``NOTIFY_SOCKET`` removed from the
environment, and is reaped by the shim's :class:`~.reaper.Reaper` (never by
asyncio's child watcher).

A failed command raises :class:`RuncError` whose ``message`` is the runtime's
own last error: the last ``"level": "error"`` record it appended to its JSON log
during the call (as the Go shim's ``getLastRuntimeError``), else its stderr/
stdout text, else ``"exit status N"``.  ``"... does not exist"`` (crun: a
missing file under ``--root``) raises :class:`RuncNotFound` (an
``errors.NotFound``), ``"... already exists"``
:class:`RuncAlreadyExists`; for ``kill``, ``"container not running"`` and
``"process already finished"`` also raise :class:`RuncNotFound` (the Go shim's
``checkKillError``).

Example::

    runc = Runc(reaper, root="/run/containerd/runc/default", log=f"{bundle}/log.json")
    await runc.create("c1", bundle, pid_file=f"{bundle}/init.pid", stdio=pio)
    pid = read_pid_file(f"{bundle}/init.pid")
    await runc.start("c1")
    (await runc.state("c1"))["status"]          # "running"
    await runc.kill("c1", signal.SIGTERM)
    await reaper.watch(pid)                      # 143
    await runc.delete("c1")
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiocontainerd import errors

from .reaper import DEVNULL, PIPE, STDOUT, Reaper

#: containerd's runc state root for the runc shim; the namespace is appended
RUNC_ROOT = "/run/containerd/runc"
#: the pid file name the Go shim uses for a container's init process
INIT_PID_FILE = "init.pid"
DEFAULT_BINARY = "runc"


def default_root(namespace: str) -> str:
    """``/run/containerd/runc/<namespace>``: containerd's default ``--root`` for the runc shim."""
    return os.path.join(RUNC_ROOT, namespace)


class RuncError(errors.ContainerdError):
    """The OCI runtime failed: ``message`` is its own last error text.

    ``command`` is the runtime sub-command (``"create"``…), ``exit_status`` its
    exit status (code or 128+signal), ``output`` its captured stdout/stderr.
    """

    def __init__(self, message: str, *, command: str = "", exit_status: int | None = None,
                 output: str = "") -> None:
        super().__init__(message)
        self.command = command
        self.exit_status = exit_status
        self.output = output


class RuncNotFound(RuncError, errors.NotFound):
    """The container or process does not exist (or, for ``kill``, is not running)."""


class RuncAlreadyExists(RuncError, errors.AlreadyExists):
    """A container with that id already exists under the runtime root."""


def read_pid_file(path: str) -> int:
    """The pid in a runtime ``--pid-file`` (decimal text); ``errors.NotFound`` if absent.

    Raises ``errors.InvalidArgument`` if the file does not hold a positive number.
    """
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError as e:
        raise errors.NotFound(f"pid file {path} does not exist") from e
    try:
        pid = int(text)
    except ValueError as e:
        raise errors.InvalidArgument(f"pid file {path}: invalid pid {text!r}") from e
    if pid <= 0:
        raise errors.InvalidArgument(f"pid file {path}: invalid pid {pid}")
    return pid


def last_runtime_error(text: str) -> str:
    """The message of the last ``"level": "error"`` record of runc JSON log text.

    Lines that are not JSON are skipped; ``""`` when there is no error record.
    """
    msg = ""
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("level") == "error":
            msg = str(rec.get("msg", "")).strip()
    return msg


def _output_error(output: str) -> str:
    """Error text from a runtime's captured output: a JSON error record, else the last line."""
    msg = last_runtime_error(output)
    if msg:
        return msg
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _classify(command: str, message: str, root: str = "") -> type[RuncError]:
    low = message.lower()
    missing_state = "no such file or directory" in low and (
        "state.json" in low or (root and root.lower().rstrip("/") + "/" in low))
    if "does not exist" in low or missing_state:
        return RuncNotFound
    if "already exists" in low or "already in use" in low:
        return RuncAlreadyExists
    if command == "kill" and ("not running" in low or "process already finished" in low):
        return RuncNotFound
    return RuncError


class Runc:
    """The OCI runtime CLI for one runtime root (and one log file).

    ``binary``: ``runc`` (default), ``crun``, ``runsc`` or a path.  ``root``: the
    runtime's state dir (``default_root(namespace)`` in containerd).  ``log``:
    the JSON log path (the Go shim uses ``<bundle>/log.json``); with ``None`` no
    ``--log`` is passed and errors are read from stderr.  ``systemd_cgroup``
    adds ``--systemd-cgroup``, ``debug`` adds ``--debug``.  ``env`` replaces the
    environment given to the runtime (default: ours without ``NOTIFY_SOCKET``).
    """

    def __init__(self, reaper: Reaper, *, binary: str = DEFAULT_BINARY, root: str,
                 log: str | None, systemd_cgroup: bool = False, debug: bool = False,
                 env: Mapping[str, str] | None = None, extra_args: Sequence[str] = ()) -> None:
        self.reaper = reaper
        self.binary = binary or DEFAULT_BINARY
        self.root = root
        self.log = log
        self.systemd_cgroup = systemd_cgroup
        self.debug = debug
        self.extra_args = list(extra_args)
        if env is None:
            env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.env = dict(env)

    # -- plumbing ----------------------------------------------------------------

    def global_args(self, log: str | None = None) -> list[str]:
        """The global flags put before every sub-command (go-runc's order)."""
        out: list[str] = []
        if self.root:
            out += ["--root", self.root]
        if self.debug:
            out.append("--debug")
        log = log or self.log
        if log:
            out += ["--log", log]
        out += ["--log-format", "json"]
        if self.systemd_cgroup:
            out.append("--systemd-cgroup")
        out += self.extra_args
        return out

    def _log_offset(self, log: str | None) -> int:
        if not log:
            return 0
        try:
            return os.stat(log).st_size
        except OSError:
            return 0

    def _log_error(self, log: str | None, offset: int) -> str:
        if not log:
            return ""
        try:
            with open(log, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return ""
        return last_runtime_error(data.decode("utf-8", "replace"))

    async def _run(self, args: Sequence[str], *, input: bytes | None = None,
                   stdio: Any = None, log: str | None = None,
                   pass_fds: Iterable[int] = ()) -> bytes:
        """Run ``<binary> <global args> <args>``; its stdout (combined with stderr).

        With ``stdio`` (a ProcessIO or ``(stdin, stdout, stderr)`` fds) the
        runtime gets those fds instead and nothing is captured; a ProcessIO's
        ``close_after_start()`` is called once the runtime exits.
        """
        log = log or self.log
        argv = [self.binary, *self.global_args(log), *args]
        offset = self._log_offset(log)
        command = args[0] if args else ""
        capture = stdio is None
        if stdio is None:
            fds: tuple[int | None, int | None, int | None] = (
                PIPE if input is not None else DEVNULL, PIPE, STDOUT)
        elif hasattr(stdio, "child_stdio"):
            fds = tuple(  # type: ignore[assignment]
                DEVNULL if fd is None else fd for fd in stdio.child_stdio())
        else:
            fds = tuple(DEVNULL if fd is None else fd for fd in stdio)  # type: ignore[assignment]
        try:
            try:
                child = await self.reaper.spawn(
                    argv, stdin=fds[0], stdout=fds[1], stderr=fds[2], env=self.env,
                    pass_fds=pass_fds)
            except OSError as e:
                raise RuncError(f"{self.binary}: {e.strerror or e}", command=command) from e
            if capture:
                out, _ = await child.communicate(input)
            else:
                out = b""
            status = await child.wait()
        finally:
            if stdio is not None and hasattr(stdio, "close_after_start"):
                stdio.close_after_start()
        if status != 0:
            text = out.decode("utf-8", "replace")
            msg = self._log_error(log, offset) or _output_error(text) or f"exit status {status}"
            raise _classify(command, msg, self.root)(msg, command=command, exit_status=status, output=text)
        return out

    async def _json(self, args: Sequence[str]) -> Any:
        out = await self._run(args)
        try:
            return json.loads(out)
        except ValueError as e:
            text = out.decode("utf-8", "replace").strip()
            raise RuncError(f"{self.binary} {args[0]}: invalid JSON output: {text[:200]!r}",
                            command=args[0], output=text) from e

    # -- container lifecycle -----------------------------------------------------

    async def create(self, id: str, bundle: str, *, pid_file: str,
                     console_socket: Any = None, stdio: Any = None,
                     no_pivot: bool = False, no_new_keyring: bool = False,
                     detach: bool = False) -> None:
        """``create --bundle B --pid-file P [--console-socket S] [--no-pivot] [--no-new-keyring] id``.

        ``console_socket``: a path or a :class:`~.console.ConsoleSocket`.
        ``stdio``: a :class:`~.stdio.ProcessIO` (its ``child_stdio()`` fds are
        given to the runtime, which passes them to the container's init when
        there is no terminal; ``close_after_start()`` follows) or a
        ``(stdin, stdout, stderr)`` tuple; ``None`` gives ``/dev/null``.
        The init pid is then in ``pid_file`` (:func:`read_pid_file`).
        """
        args = ["create", "--bundle", bundle, "--pid-file", _abs(pid_file)]
        if console_socket is not None:
            args += ["--console-socket", _path(console_socket)]
        if no_pivot:
            args.append("--no-pivot")
        if no_new_keyring:
            args.append("--no-new-keyring")
        if detach:
            args.append("--detach")
        args.append(id)
        await self._run(args, stdio=stdio if stdio is not None else (None, None, None))

    async def start(self, id: str) -> None:
        """``start id``: run the created container's process."""
        await self._run(["start", id])

    async def exec(self, id: str, process_json_path: str | Mapping[str, Any], *,
                   pid_file: str, console_socket: Any = None, stdio: Any = None,
                   detach: bool = True, log: str | None = None) -> None:
        """``exec --process F [--console-socket S] [--detach] --pid-file P id``.

        ``process_json_path``: a file holding the OCI ``process`` object, or that
        object as a dict (written to a temporary file next to ``pid_file``).
        ``stdio`` as for :meth:`create`.  ``log`` overrides the JSON log file for
        this call.  The exec'd process's pid is then in ``pid_file``.
        """
        tmp = None
        if not isinstance(process_json_path, str):
            import tempfile

            fd, tmp = tempfile.mkstemp(prefix=".process-", suffix=".json",
                                       dir=os.path.dirname(_abs(pid_file)))
            with os.fdopen(fd, "w") as f:
                json.dump(process_json_path, f)
            process_json_path = tmp
        args = ["exec", "--process", process_json_path]
        if console_socket is not None:
            args += ["--console-socket", _path(console_socket)]
        if detach:
            args.append("--detach")
        args += ["--pid-file", _abs(pid_file), id]
        try:
            await self._run(args, stdio=stdio if stdio is not None else (None, None, None),
                            log=log)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    async def kill(self, id: str, sig: int, *, all: bool = False) -> None:
        """``kill [--all] id SIG`` (``sig`` as a number).

        Raises :class:`RuncNotFound` when the container does not exist or is not running.
        """
        args = ["kill"]
        if all:
            args.append("--all")
        await self._run([*args, id, str(int(sig))])

    async def delete(self, id: str, *, force: bool = False) -> None:
        """``delete [--force] id``; :class:`RuncNotFound` if it does not exist."""
        await self._run(["delete", *(["--force"] if force else []), id])

    async def state(self, id: str) -> dict[str, Any]:
        """``state id``: the runtime's state object.

        Keys (runc): ``ociVersion``, ``id``, ``pid``, ``status`` (``"created"``,
        ``"running"``, ``"paused"``, ``"stopped"``), ``bundle``, ``rootfs``,
        ``created``, ``owner``, ``annotations``.
        """
        return await self._json(["state", id])

    async def list(self) -> list[dict[str, Any]]:
        """``list --format json``: the state objects of every container under the root."""
        return (await self._json(["list", "--format", "json"])) or []

    async def ps(self, id: str) -> list[int]:
        """``ps --format json id``: the host pids of the container's processes."""
        return [int(p) for p in (await self._json(["ps", "--format", "json", id])) or []]

    async def pause(self, id: str) -> None:
        """``pause id`` (cgroup freezer)."""
        await self._run(["pause", id])

    async def resume(self, id: str) -> None:
        """``resume id``."""
        await self._run(["resume", id])

    async def update(self, id: str, resources: Mapping[str, Any]) -> None:
        """``update --resources - id`` with ``resources`` (OCI ``linux.resources`` JSON) on stdin."""
        await self._run(["update", "--resources", "-", id],
                        input=json.dumps(resources).encode())

    async def events_stats(self, id: str) -> dict[str, Any]:
        """``events --stats id``: one stats event (``{"type": "stats", "data": {...}}``)."""
        return await self._json(["events", "--stats", id])

    async def version(self) -> str:
        """``--version`` output (e.g. ``"runc version 1.1.5\\n..."``)."""
        out = await self._run(["--version"])
        return out.decode("utf-8", "replace")

    # -- checkpoint / restore (CRIU) ---------------------------------------------

    @staticmethod
    def _criu_args(image_path: str, work_path: str | None, parent_path: str | None,
                   allow_open_tcp: bool, allow_external_unix_sockets: bool,
                   allow_terminal: bool, file_locks: bool, cgroups_mode: str | None,
                   empty_namespaces: Iterable[str], lazy_pages: bool,
                   page_server: str | None) -> list[str]:
        out: list[str] = []
        if image_path:
            out += ["--image-path", image_path]
        if work_path:
            out += ["--work-path", work_path]
        if parent_path:
            out += ["--parent-path", parent_path]
        if allow_open_tcp:
            out.append("--tcp-established")
        if allow_external_unix_sockets:
            out.append("--ext-unix-sk")
        if allow_terminal:
            out.append("--shell-job")
        if page_server:
            out += ["--page-server", page_server]
        if file_locks:
            out.append("--file-locks")
        if cgroups_mode:
            out += ["--manage-cgroups-mode", cgroups_mode]
        for ns in empty_namespaces:
            out += ["--empty-ns", ns]
        if lazy_pages:
            out.append("--lazy-pages")
        return out

    async def checkpoint(self, id: str, image_path: str, *, work_path: str | None = None,
                         leave_running: bool = False, parent_path: str | None = None,
                         allow_open_tcp: bool = False, allow_external_unix_sockets: bool = False,
                         allow_terminal: bool = False, file_locks: bool = False,
                         cgroups_mode: str | None = None, empty_namespaces: Iterable[str] = (),
                         lazy_pages: bool = False, page_server: str | None = None,
                         pre_dump: bool = False) -> None:
        """``checkpoint --image-path I [--work-path W] ... [--leave-running] id`` (needs CRIU).

        Flags as go-runc's ``CheckpointOpts``: ``--tcp-established``,
        ``--ext-unix-sk``, ``--shell-job``, ``--file-locks``,
        ``--manage-cgroups-mode``, ``--empty-ns``, ``--lazy-pages``,
        ``--pre-dump``.
        """
        args = ["checkpoint", *self._criu_args(
            image_path, work_path, parent_path, allow_open_tcp, allow_external_unix_sockets,
            allow_terminal, file_locks, cgroups_mode, empty_namespaces, lazy_pages, page_server)]
        if leave_running:
            args.append("--leave-running")
        if pre_dump:
            args.append("--pre-dump")
        await self._run([*args, id])

    async def restore(self, id: str, bundle: str, image_path: str, *, pid_file: str,
                      work_path: str | None = None, parent_path: str | None = None,
                      console_socket: Any = None, stdio: Any = None, detach: bool = True,
                      no_pivot: bool = False, no_subreaper: bool = True,
                      allow_open_tcp: bool = False, allow_external_unix_sockets: bool = False,
                      allow_terminal: bool = False, file_locks: bool = False,
                      cgroups_mode: str | None = None, empty_namespaces: Iterable[str] = (),
                      lazy_pages: bool = False) -> None:
        """``restore [criu flags] [--detach] --pid-file P [--console-socket S] [--no-pivot]
        [--no-subreaper] --bundle B id``: recreate a container from a checkpoint image.

        Defaults as the Go shim's restore (detached, ``--no-subreaper``); ``stdio``
        as for :meth:`create`.
        """
        args = ["restore", *self._criu_args(
            image_path, work_path, parent_path, allow_open_tcp, allow_external_unix_sockets,
            allow_terminal, file_locks, cgroups_mode, empty_namespaces, lazy_pages, None)]
        if detach:
            args.append("--detach")
        args += ["--pid-file", _abs(pid_file)]
        if console_socket is not None:
            args += ["--console-socket", _path(console_socket)]
        if no_pivot:
            args.append("--no-pivot")
        if no_subreaper:
            args.append("--no-subreaper")
        args += ["--bundle", bundle, id]
        await self._run(args, stdio=stdio if stdio is not None else (None, None, None))


def _abs(path: str) -> str:
    # go-runc passes the pid file as an absolute path (runc resolves it in the container's cwd)
    return os.path.abspath(path)


def _path(sock: Any) -> str:
    return sock if isinstance(sock, str) else sock.path


__all__ = ["DEFAULT_BINARY", "INIT_PID_FILE", "RUNC_ROOT", "Runc", "RuncAlreadyExists",
           "RuncError", "RuncNotFound", "default_root", "last_runtime_error", "read_pid_file"]
