"""Recovery of the CRI's pods and containers when the plugin starts (containerd's
``internal/cri/server/restart.go`` and ``podsandbox/recover.go``).

By the time the CRI plugin initialises, the runtime plugin has re-adopted every
live shim and cleaned up the dead ones (``TaskManager.load``). :func:`recover`
then:

1. loads every sandbox and container record of ``k8s.io`` into
   :class:`~.state.CRIState` (names reserved again; a reservation whose record
   was never created is simply gone);
2. reconciles each pod with its pause task: running → READY with the task's
   pid; stopped → the task deleted, NOTREADY with the exit status; gone →
   NOTREADY (its netns, CNI attachment and ``/dev/shm`` stay until
   StopPodSandbox, which kubelet calls for a NOTREADY pod, tears them down);
3. has the container mixin reconcile each container with its task
   (:meth:`~.container.ContainerRPCs.recover_containers`: running → watched
   again; stopped or gone → EXITED, the task deleted);
4. removes leftovers no record owns: ``<root|state>/io.containerd.grpc.v1.cri/
   sandboxes/<id>`` folders (``shm`` unmounted first) and, when netns are pinned
   under the state folder, unreferenced ``cni-*`` pins there (never
   ``/var/run/netns``, which other runtimes share).

READY pods get their exit watcher again. Errors are logged per object;
recovery never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiocontainerd.errors import ContainerdError, NotFound

from . import netns as netns_
from .state import SANDBOX_NOTREADY, SANDBOX_READY

if TYPE_CHECKING:
    from .service import RuntimeService

log = logging.getLogger(__name__)

UNKNOWN_EXIT_CODE = 255
# containerd.types.task.Status
STATUS_CREATED, STATUS_RUNNING, STATUS_STOPPED, STATUS_PAUSED = 1, 2, 3, 4


def _ns(ts: Any) -> int:
    return 0 if ts is None else ts.seconds * 1_000_000_000 + ts.nanos


async def _task_state(service: RuntimeService, id_: str) -> Any:
    """The task's StateResponse, or None when there is no live task."""
    runtime = service.plugin.runtime
    if runtime is None:
        return None
    try:
        task = runtime.get(service.state.namespace, id_)
        return await task.state()
    except (NotFound, ContainerdError):
        return None


async def recover(service: RuntimeService) -> None:
    """Load and reconcile the CRI state (see the module doc). Never raises."""
    state = service.state
    try:
        await asyncio.to_thread(state.load)
    except Exception:
        log.exception("loading the CRI records failed")
        return
    await asyncio.gather(*(_recover_sandbox(service, sb) for sb in list(state.sandboxes.values())))
    try:   # the container mixin watches its containers again itself
        await service.recover_containers()
    except Exception:
        log.exception("recovering containers failed")
    try:
        await asyncio.to_thread(_cleanup_orphans, service)
    except Exception:
        log.exception("cleaning up CRI leftovers failed")
    log.info("CRI recovered %d sandboxes and %d containers", len(state.sandboxes), len(state.containers))


async def _recover_sandbox(service: RuntimeService, sb: Any) -> None:
    try:
        st = await _task_state(service, sb.id)
        before = (sb.state, sb.pid)
        if st is not None and st.status in (STATUS_RUNNING, STATUS_PAUSED, STATUS_CREATED):
            sb.state = SANDBOX_READY
            sb.pid = st.pid
            service.watch_sandbox(sb.id, service.plugin.runtime.get(service.state.namespace, sb.id))
        elif st is not None:
            await service.handle_sandbox_exit(sb.id, st.exit_status, _ns(st.exited_at))
            return
        else:
            if sb.state != SANDBOX_NOTREADY:
                sb.exited_at = sb.exited_at or time.time_ns()
                sb.exit_code = UNKNOWN_EXIT_CODE
            sb.state = SANDBOX_NOTREADY
            sb.pid = 0
        if (sb.state, sb.pid) != before:
            await service.state.save_sandbox(sb)
    except Exception:
        log.exception("recovering sandbox %s", sb.id)


def _cleanup_orphans(service: RuntimeService) -> None:
    from aiocontainerd.mount.mounting import unmount_blocking

    from .sandbox import SANDBOXES_DIR

    known = set(service.state.sandboxes)
    for base in (Path(service.plugin.root), Path(service.plugin.state)):
        d = base / SANDBOXES_DIR
        if not d.is_dir():
            continue
        for entry in d.iterdir():
            if entry.name in known:
                continue
            shm = entry / "shm"
            with contextlib.suppress(OSError):
                unmount_blocking(shm, recursive=True, lazy=True)
            log.info("removing leftover sandbox folder %s", entry)
            shutil.rmtree(entry, ignore_errors=True)
    if service.plugin.config.netns_mounts_under_state_dir:
        d = Path(service.plugin.state) / "netns"
        used = {sb.netns_path for sb in service.state.sandboxes.values()}
        if d.is_dir():
            for entry in d.iterdir():
                if entry.name.startswith("cni-") and str(entry) not in used:
                    with contextlib.suppress(OSError):
                        netns_.remove_sync(os.fspath(entry))
