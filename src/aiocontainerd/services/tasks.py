"""``containerd.services.tasks.v1.Tasks`` (plugin ``io.containerd.grpc.v1.tasks``).

A thin adapter over the runtime plugin (``io.containerd.runtime.v2.task``,
:class:`aiocontainerd.runtimes.v2.manager.TaskManager`), following containerd's
``plugins/services/tasks/local.go``:

- Every call names a container (``container_id``) of the request's namespace:
  no such container → NotFound; no task for it → NotFound ``task <id> not found``.
- Create: AlreadyExists when the container has a task; rootfs is the request's
  ``rootfs`` mounts, else the container's snapshot mounts; ``options`` (task
  options) override the container's runtime options; ``runtime_path`` overrides
  the runtime; checkpoints (``checkpoint`` descriptor) are not supported
  (Unimplemented).
- Process calls (Start, Kill, ResizePty, CloseIO, Get, Wait) act on the init
  process, or on exec ``exec_id``.
- Get/List report ``containerd.v1.types.Process`` built from the shim's State.
- Metrics: for tasks matching ``filters`` (fields ``id``, ``namespace``, ``runtime``),
  ``containerd.types.Metric`` with the shim's Stats ``Any`` (cgroups v1/v2 Metrics).
- Checkpoint: only to a directory given as ``ImagePath`` in the options
  (``containerd.runc.v1.CheckpointOptions``); writing the checkpoint into the
  content store is Unimplemented.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .. import filters
from ..api.containerd.runc import v1 as runcopts
from ..api.containerd.services.tasks import v1 as api
from ..api.containerd.v1 import types as ptypes
from ..api.google import protobuf as pb
from ..errors import ContainerdError, DeadlineExceeded, InvalidArgument, NotFound, Unavailable, Unimplemented
from ..plugin import GRPC, METADATA, RUNTIME, InitContext, Registration
from . import context
from .convert import timestamp

if TYPE_CHECKING:
    from ..api.containerd import types as ctypes
    from ..api.containerd.task import v2 as taskapi
    from ..metadata.plugin import Metadata
    from ..runtimes.v2.manager import Task, TaskManager

log = logging.getLogger(__name__)
STATE_TIMEOUT = 2.0   # seconds per task State when listing (containerd's stateTimeout)


def _process(state: taskapi.StateResponse, id_: str, container_id: str) -> ptypes.Process:
    """A shim StateResponse as the wire Process of ``id_`` (the container ID or exec ID)."""
    return ptypes.Process(
        container_id=container_id, id=id_, pid=state.pid, status=ptypes.Status(int(state.status)),
        stdin=state.stdin, stdout=state.stdout, stderr=state.stderr, terminal=state.terminal,
        exit_status=state.exit_status, exited_at=state.exited_at)


class TasksService(api.TasksBase):
    def __init__(self, runtime: TaskManager, metadata: Metadata) -> None:
        self._runtime = runtime
        self._metadata = metadata

    def _task(self, container_id: str) -> Task:
        """The task of container ``container_id`` in the request's namespace (NotFound)."""
        ns = context.namespace()
        self._metadata.containers.get(ns, container_id)
        try:
            return self._runtime.get(ns, container_id)
        except NotFound:
            raise NotFound(f"task {container_id} not found") from None

    async def create(self, message: api.CreateTaskRequest) -> api.CreateTaskResponse:
        ns = context.namespace()
        self._metadata.containers.get(ns, message.container_id)
        if message.checkpoint is not None and message.checkpoint.digest:
            raise Unimplemented("creating a task from a checkpoint is not supported")
        task = await self._runtime.create(
            ns, message.container_id, rootfs=list(message.rootfs), stdin=message.stdin,
            stdout=message.stdout, stderr=message.stderr, terminal=message.terminal,
            options=message.options, runtime_path=message.runtime_path)
        return api.CreateTaskResponse(container_id=message.container_id, pid=task.pid)

    async def start(self, message: api.StartRequest) -> api.StartResponse:
        task = self._task(message.container_id)
        pid = await task.start(message.exec_id)
        return api.StartResponse(pid=pid)

    async def delete(self, message: api.DeleteTaskRequest) -> api.DeleteResponse:
        ns = context.namespace()
        self._metadata.containers.get(ns, message.container_id)
        exit_ = await self._runtime.delete(ns, message.container_id)
        return api.DeleteResponse(id=message.container_id, pid=exit_.pid, exit_status=exit_.status,
                                  exited_at=timestamp(exit_.exited_at))

    async def delete_process(self, message: api.DeleteProcessRequest) -> api.DeleteResponse:
        task = self._task(message.container_id)
        exit_ = await task.delete_process(message.exec_id)
        return api.DeleteResponse(id=message.exec_id, pid=exit_.pid, exit_status=exit_.status,
                                  exited_at=timestamp(exit_.exited_at))

    async def get(self, message: api.GetRequest) -> api.GetResponse:
        task = self._task(message.container_id)
        state = await task.state(message.exec_id)
        return api.GetResponse(process=_process(state, message.exec_id or task.id, task.id))

    async def list(self, message: api.ListTasksRequest) -> api.ListTasksResponse:
        ns = context.namespace()
        flt = filters.parse([message.filter] if message.filter else [])
        tasks = self._runtime.list(ns)

        async def one(t: Task) -> ptypes.Process | None:
            try:
                state = await asyncio.wait_for(t.state(), STATE_TIMEOUT)
            except (NotFound, Unavailable, DeadlineExceeded, TimeoutError):
                return None  # raced with deletion, or a hung shim
            except ContainerdError as e:
                log.error("get state", extra={"fields": {"id": t.id, "error": str(e)}})
                return None
            return _process(state, t.id, t.id)

        out = []
        for t, p in zip(tasks, await asyncio.gather(*(one(t) for t in tasks)), strict=True):
            if p is None:
                continue
            fields = {"id": t.id, "namespace": ns, "runtime": t.runtime, "pid": str(p.pid),
                      "status": ptypes.Status(p.status).name.lower()}
            if flt.match(lambda path, f=fields: f.get(path[0]) if len(path) == 1 else None):
                out.append(p)
        return api.ListTasksResponse(tasks=out)

    async def kill(self, message: api.KillRequest) -> pb.Empty:
        task = self._task(message.container_id)
        await task.kill(message.signal, exec_id=message.exec_id, all=message.all)
        return pb.Empty()

    async def exec(self, message: api.ExecProcessRequest) -> pb.Empty:
        if not message.exec_id:
            raise InvalidArgument("exec id cannot be empty")
        task = self._task(message.container_id)
        await task.exec(message.exec_id, spec=message.spec, stdin=message.stdin, stdout=message.stdout,
                        stderr=message.stderr, terminal=message.terminal)
        return pb.Empty()

    async def resize_pty(self, message: api.ResizePtyRequest) -> pb.Empty:
        task = self._task(message.container_id)
        await task.resize_pty(message.width, message.height, message.exec_id)
        return pb.Empty()

    async def close_io(self, message: api.CloseIoRequest) -> pb.Empty:
        task = self._task(message.container_id)
        if message.stdin:
            await task.close_io(message.exec_id)
        return pb.Empty()

    async def pause(self, message: api.PauseTaskRequest) -> pb.Empty:
        await self._task(message.container_id).pause()
        return pb.Empty()

    async def resume(self, message: api.ResumeTaskRequest) -> pb.Empty:
        await self._task(message.container_id).resume()
        return pb.Empty()

    async def list_pids(self, message: api.ListPidsRequest) -> api.ListPidsResponse:
        task = self._task(message.container_id)
        return api.ListPidsResponse(processes=await task.pids())

    async def checkpoint(self, message: api.CheckpointTaskRequest) -> api.CheckpointTaskResponse:
        task = self._task(message.container_id)
        image_path = ""
        if message.options is not None and message.options.type_url.endswith("CheckpointOptions"):
            image_path = runcopts.CheckpointOptions.parse(message.options.value).image_path
        if not image_path:
            raise Unimplemented("checkpoint into the content store is not supported: "
                                "give an image path in the checkpoint options")
        await task.checkpoint(image_path, message.options)
        return api.CheckpointTaskResponse()

    async def update(self, message: api.UpdateTaskRequest) -> pb.Empty:
        task = self._task(message.container_id)
        await task.update(message.resources, dict(message.annotations))
        return pb.Empty()

    async def metrics(self, message: api.MetricsRequest) -> api.MetricsResponse:
        flt = filters.parse(message.filters)
        ns = context.namespace()
        tasks = [t for t in self._runtime.list(ns)
                 if flt.match(lambda path, t=t: {"id": t.id, "namespace": t.namespace,
                                                 "runtime": t.runtime}.get(path[0]))]

        async def one(t: Task) -> tuple[int, pb.Any | None]:
            collected = time.time_ns()
            try:
                return collected, await t.stats()
            except NotFound:
                return collected, None
            except ContainerdError as e:
                log.error("collecting metrics", extra={"fields": {"id": t.id, "error": str(e)}})
                return collected, None

        out = []
        for t, (at, stats) in zip(tasks, await asyncio.gather(*(one(t) for t in tasks)), strict=True):
            if stats is not None:
                out.append(ptypes_metric(t.id, at, stats))
        return api.MetricsResponse(metrics=out)

    async def wait(self, message: api.WaitRequest) -> api.WaitResponse:
        task = self._task(message.container_id)
        exit_ = await task.wait(message.exec_id)
        return api.WaitResponse(exit_status=exit_.status, exited_at=timestamp(exit_.exited_at))


def ptypes_metric(id_: str, at: int, data: pb.Any) -> ctypes.Metric:
    """A ``containerd.types.Metric`` of task ``id_`` collected at ``at`` (ns)."""
    from ..api.containerd import types as ctypes

    return ctypes.Metric(timestamp=timestamp(at), id=id_, data=data)


async def _init(ctx: InitContext) -> TasksService:
    return TasksService(ctx.get(RUNTIME, "task"), ctx.get(METADATA))


PLUGIN = Registration(GRPC, "tasks", _init, requires=(RUNTIME, METADATA))
