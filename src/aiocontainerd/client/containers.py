"""``client.containers``: container records (the Containers service) and ``new_container``.

A container is metadata: an id, the image it came from, labels, the runtime
(``io.containerd.runc.v2`` …) and its options, an OCI runtime spec (an
``Any`` of type ``types.containerd.io/opencontainers/runtime-spec/1/Spec``,
see :mod:`aiocontainerd.oci`) and the snapshot (snapshotter + key) that will be
its root filesystem. Nothing runs until a task is created from it
(:meth:`Container.new_task`, :mod:`aiocontainerd.client.tasks`).

:meth:`Containers.new_container` does what ``ctr run IMAGE ID`` does before
starting anything: it resolves the image's manifest for this platform, reads
its config, checks the image is unpacked in the snapshotter (our pull unpacks
by default) and unpacks it there from the client when it is not
(:mod:`.unpack`, as ``ctr run`` does), prepares the writable
snapshot ``ID`` on the top chain ID, generates the spec from the image config
(user names resolved from the snapshot's ``/etc/passwd``), and creates the
record, all under a temporary lease so the garbage collector cannot take the
snapshot before the record refers to it::

    async with Client(address) as client:
        c = await client.containers.new_container("c1", "docker.io/library/busybox:latest",
                                                  args=["echo", "hi"])
        task = await c.new_task(cio.with_streams(stdout=sys.stdout.buffer))
        await task.start()
        status = await task.wait()
        await task.delete()
        await c.delete()

Errors are :mod:`aiocontainerd.errors` classes (NotFound, AlreadyExists,
FailedPrecondition, InvalidArgument).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from grpclib.client import Channel

from .. import oci
from ..api.containerd import types as ctypes
from ..api.containerd.services.containers import v1 as containers_api
from ..api.containerd.services.leases import v1 as leases_api
from ..api.containerd.services.snapshots import v1 as snapshots_api
from ..api.google import protobuf as pb
from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..mount import Mount
from ..services.context import LEASE_HEADER
from . import cio
from .images import Images, ResolvedImage, _call, resolve_image

if TYPE_CHECKING:
    from .tasks import Task, Tasks

DEFAULT_RUNTIME = "io.containerd.runc.v2"
DEFAULT_SNAPSHOTTER = "overlayfs"
#: label ``ctr run`` sets from the image's StopSignal (SIGTERM by default)
STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal"
LEASE_EXPIRE_LABEL = "containerd.io/gc.expire"


def _ns(ts: pb.Timestamp | None) -> datetime.datetime | None:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return datetime.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, datetime.UTC)


@dataclasses.dataclass
class ContainerInfo:
    """A container record (containerd's ``containers.Container``).

    ``spec`` is the decoded runtime spec (``dict``) or None; ``runtime_options``
    the runtime's options ``Any`` unchanged; ``extensions`` maps names to ``Any``.
    """

    id: str
    image: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    runtime: str = DEFAULT_RUNTIME
    runtime_options: pb.Any | None = None
    spec: oci.Spec | None = None
    snapshotter: str = ""
    snapshot_key: str = ""
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    extensions: dict[str, pb.Any] = dataclasses.field(default_factory=dict)
    sandbox: str = ""

    @classmethod
    def from_wire(cls, c: containers_api.Container) -> ContainerInfo:
        spec: oci.Spec | None
        try:
            spec = oci.from_any(c.spec)
        except InvalidArgument:  # another spec type: keep the record readable
            spec = None
        return cls(id=c.id, image=c.image, labels=dict(c.labels),
                   runtime=c.runtime.name if c.runtime else "",
                   runtime_options=c.runtime.options if c.runtime else None,
                   spec=spec, snapshotter=c.snapshotter, snapshot_key=c.snapshot_key,
                   created_at=_ns(c.created_at), updated_at=_ns(c.updated_at),
                   extensions=dict(c.extensions), sandbox=c.sandbox)

    def to_wire(self) -> containers_api.Container:
        return containers_api.Container(
            id=self.id, labels=dict(self.labels), image=self.image,
            runtime=containers_api.ContainerRuntime(name=self.runtime, options=self.runtime_options),
            spec=oci.to_any(self.spec) if self.spec is not None else None,
            snapshotter=self.snapshotter, snapshot_key=self.snapshot_key,
            extensions=dict(self.extensions), sandbox=self.sandbox)

    def to_json(self) -> dict[str, Any]:
        """The record as ``ctr containers info`` prints it (Go field names, spec decoded)."""
        def ts(t: datetime.datetime | None) -> str:
            return (t or datetime.datetime(1, 1, 1, tzinfo=datetime.UTC)).isoformat().replace("+00:00", "Z")

        out: dict[str, Any] = {
            "ID": self.id, "Labels": self.labels or None, "Image": self.image,
            "Runtime": {"Name": self.runtime, "Options": None if self.runtime_options is None else
                        {"type_url": self.runtime_options.type_url}},
            "SnapshotKey": self.snapshot_key, "Snapshotter": self.snapshotter,
            "CreatedAt": ts(self.created_at), "UpdatedAt": ts(self.updated_at),
            "Extensions": {k: {"type_url": v.type_url} for k, v in self.extensions.items()} or None,
            "SandboxID": self.sandbox,
        }
        if self.spec is not None:
            out["Spec"] = self.spec
        return out


class Container:
    """A container of the client's namespace (records are re-read by :meth:`info`)."""

    def __init__(self, containers: Containers, info: ContainerInfo) -> None:
        self._containers = containers
        self.id = info.id
        self.record = info

    def __repr__(self) -> str:
        return f"Container({self.id!r}, image={self.record.image!r})"

    async def info(self) -> ContainerInfo:
        """The current record. Raises NotFound."""
        self.record = await self._containers.info(self.id)
        return self.record

    async def spec(self) -> oci.Spec:
        """The runtime spec. Raises NotFound, FailedPrecondition (no spec)."""
        info = await self.info()
        if info.spec is None:
            raise FailedPrecondition(f"container {self.id} has no runtime spec")
        return info.spec

    async def set_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        """Set labels (an empty value removes one); returns all labels."""
        info = ContainerInfo(self.id, labels=dict(labels))
        updated = await self._containers.update(info, *[f"labels.{k}" for k in labels])
        self.record = updated.record
        return dict(updated.record.labels)

    async def new_task(self, io: cio.IOCreator = cio.null_io, **kwargs: Any) -> Task:
        """Create this container's task (see :meth:`Tasks.create`)."""
        return await self._containers._tasks().create(self, io, **kwargs)

    async def task(self) -> Task:
        """The existing task, without attaching to its I/O (``cio.Load``). Raises NotFound."""
        return await self._containers._tasks().load(self.id)

    async def delete(self, *, cleanup_snapshot: bool = True) -> None:
        """Remove the snapshot (unless ``cleanup_snapshot`` is false) and the record.

        Raises NotFound (no such container); a task that still exists makes the
        daemon refuse (FailedPrecondition).
        """
        info = self.record
        if cleanup_snapshot and info.snapshotter and info.snapshot_key:
            with contextlib.suppress(NotFound):
                await self._containers._remove_snapshot(info.snapshotter, info.snapshot_key)
        await self._containers.delete(self.id)


class Containers:
    """The Containers service for the client's namespace (see the module doc)."""

    def __init__(self, channel: Channel, metadata: Mapping[str, str], images: Images,
                 timeout: float | None = None, client: Any = None) -> None:
        self._channel = channel
        self._metadata = dict(metadata)
        self._timeout = timeout
        self._images = images
        self._client = client
        self._stub = containers_api.ContainersStub(channel, timeout=timeout, metadata=self._metadata)

    @property
    def namespace(self) -> str:
        from ..services.context import NAMESPACE_HEADER

        return self._metadata.get(NAMESPACE_HEADER, "")

    def _tasks(self) -> Tasks:
        if self._client is not None:
            return self._client.tasks
        from .tasks import Tasks

        return Tasks(self._channel, self._metadata, self._timeout)

    def _snapshots(self, lease: str = "") -> snapshots_api.SnapshotsStub:
        metadata = {**self._metadata, **({LEASE_HEADER: lease} if lease else {})}
        return snapshots_api.SnapshotsStub(self._channel, timeout=self._timeout, metadata=metadata)

    # -- records -----------------------------------------------------------------------------

    async def create(self, info: ContainerInfo, *, lease: str = "") -> Container:
        """Create the record. Raises AlreadyExists, InvalidArgument."""
        stub = self._stub
        if lease:
            stub = containers_api.ContainersStub(self._channel, timeout=self._timeout,
                                                 metadata={**self._metadata, LEASE_HEADER: lease})
        r = await _call(stub.create(containers_api.CreateContainerRequest(container=info.to_wire())))
        return Container(self, ContainerInfo.from_wire(r.container))

    async def info(self, id: str) -> ContainerInfo:
        """The record of ``id``. Raises NotFound."""
        r = await _call(self._stub.get(containers_api.GetContainerRequest(id=id)))
        return ContainerInfo.from_wire(r.container)

    async def get(self, id: str) -> Container:
        """Container ``id`` (``client.LoadContainer``). Raises NotFound."""
        return Container(self, await self.info(id))

    async def list(self, *filters: str) -> list[Container]:
        """Containers matching any of ``filters`` (containerd syntax, e.g. ``labels.app==web``)."""
        r = await _call(self._stub.list(containers_api.ListContainersRequest(filters=list(filters))))
        return [Container(self, ContainerInfo.from_wire(c)) for c in r.containers]

    async def update(self, info: ContainerInfo, *paths: str) -> Container:
        """Update fields of ``info.id`` named by ``paths`` (``labels``, ``labels.<k>``, ``spec``,
        ``image``, ``snapshotkey``, ``extensions.<k>``…; none: every mutable field).
        Raises NotFound, InvalidArgument."""
        mask = pb.FieldMask(paths=list(paths)) if paths else None
        r = await _call(self._stub.update(containers_api.UpdateContainerRequest(
            container=info.to_wire(), update_mask=mask)))
        return Container(self, ContainerInfo.from_wire(r.container))

    async def delete(self, id: str) -> None:
        """Delete the record only (see :meth:`Container.delete`). Raises NotFound."""
        await _call(self._stub.delete(containers_api.DeleteContainerRequest(id=id)))

    async def _remove_snapshot(self, snapshotter: str, key: str) -> None:
        await _call(self._snapshots().remove(snapshots_api.RemoveSnapshotRequest(
            snapshotter=snapshotter, key=key)))

    async def mounts(self, snapshotter: str, key: str) -> list[Mount]:
        """The mounts of snapshot ``key``. Raises NotFound."""
        r = await _call(self._snapshots().mounts(snapshots_api.MountsRequest(snapshotter=snapshotter,
                                                                               key=key)))
        return [Mount(m.type, m.source, tuple(m.options), m.target) for m in r.mounts]

    # -- from an image ------------------------------------------------------------------------

    async def _image(self, name: str, platform: str) -> ResolvedImage:
        return await resolve_image(self._images, name, platform)

    @contextlib.asynccontextmanager
    async def _lease(self) -> Any:
        stub = leases_api.LeasesStub(self._channel, timeout=self._timeout, metadata=self._metadata)
        expire = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=24)
        lease_id = f"aiocontainerd-client-{secrets.token_hex(8)}"
        await _call(stub.create(leases_api.CreateRequest(
            id=lease_id, labels={LEASE_EXPIRE_LABEL: expire.strftime("%Y-%m-%dT%H:%M:%SZ")})))
        try:
            yield lease_id
        finally:
            with contextlib.suppress(Exception):
                await _call(stub.delete(leases_api.DeleteRequest(id=lease_id)))

    async def _spec_with_rootfs(self, id: str, mounts: Sequence[Mount],
                                opts: Sequence[oci.SpecOpt]) -> oci.Spec:
        rootfs = oci.from_mounts(mounts)
        if rootfs is not None:
            return await asyncio.to_thread(oci.generate_spec, self.namespace, id, *opts, rootfs=rootfs)
        from ..mount.mounting import temp_mount

        async with temp_mount(mounts, read_only=True) as folder:
            return await asyncio.to_thread(oci.generate_spec, self.namespace, id, *opts,
                                           rootfs=oci.DirRootFS(folder))

    async def new_container(self, id: str, image: str, *, snapshotter: str = DEFAULT_SNAPSHOTTER,
                            runtime: str = DEFAULT_RUNTIME, runtime_options: pb.Any | None = None,
                            args: Sequence[str] | None = None, env: Iterable[str] = (),
                            mounts: Iterable[Mapping[str, Any] | str] = (), tty: bool = False,
                            labels: Mapping[str, str] | None = None, hostname: str = "",
                            net_host: bool = False, privileged: bool = False, cwd: str = "",
                            spec_opts: Sequence[oci.SpecOpt] = (), platform: str = "") -> Container:
        """A container ``id`` from ``image``, as ``ctr run`` makes it (see the module doc).

        ``args`` replaces the image's entrypoint and command; ``env`` (``K=V``, or ``K``
        to unset) applies over the image's Env; ``mounts`` are runtime-spec mount objects
        or ``--mount`` strings; ``labels`` go over the image config's labels;
        ``spec_opts`` are applied last. The image is unpacked into ``snapshotter`` first
        when it is not there yet. Raises NotFound (image, layer blob), InvalidArgument
        (a layer that is not its diff ID), AlreadyExists (container or snapshot ``id``).
        """
        facts = await self._image(image, platform)
        config_labels = dict((facts.config.get("config") or {}).get("Labels") or {})
        stop_signal = (facts.config.get("config") or {}).get("StopSignal") or "SIGTERM"
        all_labels = {**config_labels, **dict(labels or {}), STOP_SIGNAL_LABEL: stop_signal}
        opts: list[oci.SpecOpt] = [oci.with_default_unix_devices, oci.with_env(env),
                                   oci.with_mounts(mounts), oci.with_image_config(facts.config)]
        if args:
            opts.append(oci.with_process_args(*args))
        if cwd:
            opts.append(oci.with_process_cwd(cwd))
        if tty:
            opts.append(oci.with_tty)
        if privileged:
            opts += [oci.with_privileged, oci.with_all_devices_allowed]
        if net_host:
            import socket

            opts += [oci.with_host_namespace("network"), oci.with_env([f"HOSTNAME={socket.gethostname()}"])]
        if hostname:
            opts.append(oci.with_hostname(hostname))
        opts += list(spec_opts)
        async with self._lease() as lease:
            snapshots = self._snapshots(lease)
            chain_id = facts.chain_ids[-1]
            try:
                await _call(snapshots.stat(snapshots_api.StatSnapshotRequest(
                    snapshotter=snapshotter, key=chain_id)))
            except NotFound:
                # not unpacked there yet: unpack it now, as ctr run does
                from .unpack import unpack

                await unpack(self._channel, self._metadata, facts, snapshotter, lease=lease,
                             call_timeout=self._timeout)
            r = await _call(snapshots.prepare(snapshots_api.PrepareSnapshotRequest(
                snapshotter=snapshotter, key=id, parent=chain_id)))
            rootfs = [Mount(m.type, m.source, tuple(m.options), m.target) for m in r.mounts]
            try:
                spec = await self._spec_with_rootfs(id, rootfs, opts)
                info = ContainerInfo(id=id, image=facts.name, labels=all_labels, runtime=runtime,
                                     runtime_options=runtime_options, spec=spec, snapshotter=snapshotter,
                                     snapshot_key=id)
                return await self.create(info, lease=lease)
            except BaseException:
                with contextlib.suppress(Exception):
                    await _call(snapshots.remove(snapshots_api.RemoveSnapshotRequest(
                        snapshotter=snapshotter, key=id)))
                raise


def wire_mounts(mounts: Iterable[Mount]) -> list[ctypes.Mount]:
    """``mounts`` as ``containerd.types.Mount`` messages."""
    return [ctypes.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
            for m in mounts]
