"""Containers and their processes in the shim, with Go's state machines.

A :class:`Container` (Go's ``runc.Container``) has one :class:`Process` for
its init (id = container id) and any number of exec processes (id = exec id).
States and transitions follow ``cmd/containerd-shim-runc-v2/process``
(``init_state.go``, ``exec_state.go``)::

    init:  created --Start--> running --Pause--> paused --Resume--> running
           created|running|paused --exit--> stopped --Delete--> deleted
           created --Delete--> deleted
    exec:  created --Start--> running --exit--> stopped --Delete--> (removed)

A call in the wrong state raises ``errors.FailedPrecondition`` with Go's
message (e.g. ``cannot start a running process``); Kill of a finished
process raises ``errors.NotFound("process already finished")``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from aiocontainerd import errors
from aiocontainerd.api.containerd.v1.types import Status
from aiocontainerd.api.google import protobuf as pb

from .publisher import timestamp

#: Go's ``protobuf.ToTimestamp(time.Time{})``: the exited_at of a running process
ZERO_TIME = -62135596800

STATUS = {"created": Status.CREATED, "running": Status.RUNNING, "stopped": Status.STOPPED,
          "paused": Status.PAUSED, "pausing": Status.PAUSING}


class Stdio:
    """The stdio a process was created with (FIFO paths or log URIs) and ``terminal``."""

    __slots__ = ("stderr", "stdin", "stdout", "terminal")

    def __init__(self, stdin: str = "", stdout: str = "", stderr: str = "",
                 terminal: bool = False) -> None:
        self.stdin, self.stdout, self.stderr, self.terminal = stdin, stdout, stderr, terminal


class Process:
    """One init or exec process: pid, state, stdio, exit status and time.

    ``exited`` is set once the exit is recorded; ``start_gate`` (while a Start
    is in flight) lets the exit handler publish TaskExit only after
    TaskStart/TaskExecStarted, as Go's ``preStart`` ordering does.
    """

    def __init__(self, container: Container, id: str, stdio: Stdio, *, spec: bytes = b"") -> None:
        self.container = container
        self.id = id
        self.stdio = stdio
        self.spec = spec
        self.pid = 0
        self.state = "created"
        self.exit_status = 0
        self.exited_at_ns = 0
        self.exited = asyncio.Event()
        self.io = None            # stdio.ProcessIO once opened
        self.start_gate: asyncio.Future[None] | None = None
        self.exit_handled = False

    @property
    def is_init(self) -> bool:
        return self is self.container.init

    def exited_at(self) -> pb.Timestamp:
        """Exit time as a Timestamp (Go's zero time when not exited)."""
        if not self.exited_at_ns:
            return pb.Timestamp(seconds=ZERO_TIME, nanos=0)
        return timestamp(self.exited_at_ns)

    def set_exited(self, status: int) -> None:
        """Record the exit (``stopped``), once; wakes every Wait."""
        if self.exited.is_set():
            return
        self.exit_status = status
        self.exited_at_ns = time.time_ns()
        if self.state != "deleted":
            self.state = "stopped"
        self.exited.set()

    def status(self) -> Status:
        """The task API status of this process."""
        return STATUS.get(self.state, Status.UNKNOWN)

    # -- state checks (Go's per-state methods) ----------------------------------

    def check_start(self) -> None:
        if self.state == "created":
            return
        if self.state in ("running", "paused", "pausing"):
            raise errors.FailedPrecondition("cannot start a running process")
        if self.state == "stopped":
            raise errors.FailedPrecondition("cannot start a stopped process")
        raise errors.FailedPrecondition("cannot start a deleted process")

    def check_delete(self) -> None:
        if self.state in ("created", "stopped"):
            return
        if self.state == "running":
            raise errors.FailedPrecondition("cannot delete a running process")
        if self.state in ("paused", "pausing"):
            raise errors.FailedPrecondition("cannot delete a paused process")
        raise errors.NotFound(f"process {self.id} already deleted")

    def check_pause(self) -> None:
        if self.state == "running":
            return
        if self.state == "created":
            raise errors.FailedPrecondition("cannot pause task in created state")
        if self.state in ("paused", "pausing"):
            raise errors.FailedPrecondition("cannot pause a paused container")
        raise errors.FailedPrecondition(f"cannot pause a {self.state} container")

    def check_resume(self) -> None:
        if self.state == "paused":
            return
        if self.state == "created":
            raise errors.FailedPrecondition("cannot resume task in created state")
        if self.state == "running":
            raise errors.FailedPrecondition("cannot resume a running process")
        raise errors.FailedPrecondition(f"cannot resume a {self.state} process")

    def check_kill(self) -> None:
        if self.exited.is_set() or self.state in ("stopped", "deleted"):
            raise errors.NotFound("process already finished")
        if not self.is_init and self.pid == 0:
            raise errors.FailedPrecondition("process not created")


class Container:
    """A container served by this shim: bundle, runtime, init and execs.

    ``runc`` is the :class:`.runc.Runc` for the container's runtime options;
    ``rootfs_mounted`` tells Delete to unmount ``<bundle>/rootfs``.
    """

    def __init__(self, id: str, bundle: str, runc: object, stdio: Stdio) -> None:
        self.id = id
        self.bundle = bundle
        self.runc = runc
        self.rootfs = os.path.join(bundle, "rootfs")
        self.rootfs_mounted = False
        self.init = Process(self, id, stdio)
        self.execs: dict[str, Process] = {}
        self.reserved: set[str] = set()

    def process(self, exec_id: str) -> Process:
        """The init (``exec_id == ""``) or exec process; NotFound as Go's ``Container.Process``."""
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise errors.NotFound(f"process does not exist {exec_id}") from None

    def running_execs(self) -> list[Process]:
        return [p for p in self.execs.values() if p.pid and not p.exited.is_set()]

    def should_kill_all_on_exit(self) -> bool:
        """Go's ``ShouldKillAllOnExit``: False only when the spec gives the container
        its own new pid namespace (then the kernel kills the rest with init)."""
        try:
            with open(os.path.join(self.bundle, "config.json"), "rb") as f:
                spec = json.load(f)
        except (OSError, ValueError):
            return True
        for ns in (spec.get("linux") or {}).get("namespaces") or []:
            if ns.get("type") == "pid" and not ns.get("path"):
                return False
        return True

    def cgroups_path(self) -> str | None:
        """``linux.cgroupsPath`` of the bundle's spec, if any."""
        try:
            with open(os.path.join(self.bundle, "config.json"), "rb") as f:
                return (json.load(f).get("linux") or {}).get("cgroupsPath") or None
        except (OSError, ValueError):
            return None
