"""OOM notifications for ``/tasks/oom``, as Go's shim watches them.

cgroup v1 (and hybrid hosts, whose memory controller is v1): an ``eventfd``
registered through ``cgroup.event_control`` on ``memory.oom_control`` of the
container's memory cgroup; each wake-up while the cgroup still exists is an
OOM event (Go's ``oom_v1`` epoller).  cgroup v2: the ``oom_kill`` counter of
``memory.events`` is checked every ``POLL_SECONDS``; an increase is an event
(Go watches the same file with inotify).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

CGROUP_ROOT = "/sys/fs/cgroup"
POLL_SECONDS = 1.0


def _cgroup_lines(pid: int) -> list[tuple[str, str]]:
    out = []
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            out.append((controllers, path))
    return out


class OOMWatcher:
    """Watch containers' memory cgroups; ``callback(container_id)`` on each OOM."""

    def __init__(self, callback: Callable[[str], None]) -> None:
        self.callback = callback
        self._v1: dict[str, tuple[int, int, str]] = {}
        self._v2: dict[str, asyncio.Task[None]] = {}

    def add(self, id: str, pid: int) -> None:
        """Start watching container ``id`` whose init is ``pid``; OSError if impossible."""
        lines = _cgroup_lines(pid)
        for controllers, path in lines:
            if "memory" in controllers.split(","):
                return self._add_v1(id, os.path.join(CGROUP_ROOT, "memory", path.lstrip("/")))
        for controllers, path in lines:
            if controllers == "" and os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
                return self._add_v2(id, os.path.join(CGROUP_ROOT, path.lstrip("/")))
        raise OSError("no memory cgroup")

    def _add_v1(self, id: str, cgdir: str) -> None:
        ofd = os.open(os.path.join(cgdir, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            with open(os.path.join(cgdir, "cgroup.event_control"), "w") as f:
                f.write(f"{efd} {ofd}")
        except OSError:
            os.close(efd)
            os.close(ofd)
            raise
        self.remove(id)
        self._v1[id] = (efd, ofd, cgdir)
        asyncio.get_running_loop().add_reader(efd, self._v1_ready, id)

    def _v1_ready(self, id: str) -> None:
        entry = self._v1.get(id)
        if entry is None:
            return
        efd, _, cgdir = entry
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(efd)
        if not os.path.isdir(cgdir):
            self.remove(id)
            return
        self.callback(id)

    def _add_v2(self, id: str, cgdir: str) -> None:
        self.remove(id)
        self._v2[id] = asyncio.get_running_loop().create_task(self._poll_v2(id, cgdir))

    async def _poll_v2(self, id: str, cgdir: str) -> None:
        last = _oom_kills(cgdir)
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                now = _oom_kills(cgdir)
            except OSError:
                return
            if now > last:
                self.callback(id)
            last = now

    def remove(self, id: str) -> None:
        """Stop watching ``id`` (no error if not watched)."""
        entry = self._v1.pop(id, None)
        if entry is not None:
            efd, ofd, _ = entry
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(efd)
            os.close(efd)
            os.close(ofd)
        task = self._v2.pop(id, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        for id in list(self._v1) + list(self._v2):
            self.remove(id)


def _oom_kills(cgdir: str) -> int:
    with open(os.path.join(cgdir, "memory.events")) as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return 0
