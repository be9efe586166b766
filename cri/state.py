"""The CRI's records of pods and containers, their in-memory indexes and name reservations.

containerd keeps CRI state the same way (``internal/cri/store/sandbox``,
``internal/cri/store/container``, ``internal/cri/store/util.go``'s name index
and ``internal/cri/server/helpers.go``'s names): every pod sandbox and every
CRI container is a *container record* in the metadata store's ``k8s.io``
namespace, labelled ``io.cri-containerd.kind`` = ``sandbox`` | ``container``,
carrying the CRI metadata in a container *extension*:

- pod sandbox (the pause container): extension ``io.cri-containerd.sandbox.metadata``,
  type URL ``github.com/containerd/cri/pkg/store/sandbox/Metadata``;
- container: extension ``io.cri-containerd.container.metadata``,
  type URL ``github.com/containerd/cri/pkg/store/container/Metadata``.

The extension value is JSON ``{"Version": "v1", "Metadata": {...}}`` (the
shape containerd's versioned metadata has); ``Metadata`` is our record's
fields (:meth:`SandboxRecord.to_json`, :meth:`ContainerRecord.to_json`), the
CRI config as protobuf JSON. containerd keeps a container's *status* (start,
finish, exit code, reason) in a ``status`` file beside it; we keep it in the
same extension, rewritten on every state change (one small LMDB write).

In memory (:class:`CRIState`): ``sandboxes`` and ``containers`` (ID → record),
loaded from the store at plugin init (:meth:`CRIState.load`) and changed only
through the methods here, which persist first, then index. Lookups accept a
whole ID or a unique prefix of one (containerd's truncindex): an unknown ID is
NotFound, an ambiguous prefix InvalidArgument.

Names (:class:`NameIndex`): one index for sandbox and container names (their
shapes differ: 4 vs 5 ``_``-joined parts, so they cannot collide in practice).
``reserve(name, id)`` raises AlreadyExists when another ID holds ``name``;
reserving again for the same ID is fine. Reservations live only in memory and
are rebuilt by :meth:`CRIState.load` from the records, so a crash between
reserve and record creation leaves nothing reserved after restart.

Name formats (containerd's ``makeSandboxName``/``makeContainerName``, *not*
dockershim's ``k8s_POD_…``): sandbox ``<name>_<namespace>_<uid>_<attempt>``,
container ``<container name>_<pod name>_<pod namespace>_<pod uid>_<attempt>``.

Container events (``GetContainerEvents``): :meth:`CRIState.container_event`
hands an event to every subscriber (:meth:`CRIState.subscribe_events`); the
event's pod status and container statuses are filled by
:attr:`CRIState.event_builder`, which the RuntimeService sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.errors import AlreadyExists, InvalidArgument, NotFound
from aiocontainerd.types import TypedValue

if TYPE_CHECKING:
    from aiocontainerd.metadata.containers import Container, ContainerStore

log = logging.getLogger(__name__)

NAMESPACE = "k8s.io"

# labels and extensions (containerd internal/cri/labels)
CRI_PREFIX = "io.cri-containerd"
KIND_LABEL = f"{CRI_PREFIX}.kind"
KIND_SANDBOX = "sandbox"
KIND_CONTAINER = "container"
SANDBOX_EXTENSION = f"{CRI_PREFIX}.sandbox.metadata"
CONTAINER_EXTENSION = f"{CRI_PREFIX}.container.metadata"
SANDBOX_TYPE_URL = "github.com/containerd/cri/pkg/store/sandbox/Metadata"
CONTAINER_TYPE_URL = "github.com/containerd/cri/pkg/store/container/Metadata"
METADATA_VERSION = "v1"
POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
POD_UID_LABEL = "io.kubernetes.pod.uid"
CONTAINER_NAME_LABEL = "io.kubernetes.container.name"
POD_INFRA_CONTAINER_NAME = "POD"

# OCI annotations grouping a pod's containers (containerd pkg/cri/annotations)
ANNOTATION_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CONTAINER_TYPE_SANDBOX = "sandbox"
CONTAINER_TYPE_CONTAINER = "container"
ANNOTATION_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
ANNOTATION_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
ANNOTATION_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
ANNOTATION_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
ANNOTATION_SANDBOX_LOG_DIR = "io.kubernetes.cri.sandbox-log-directory"
ANNOTATION_CONTAINER_NAME = "io.kubernetes.cri.container-name"
ANNOTATION_IMAGE_NAME = "io.kubernetes.cri.image-name"
ANNOTATION_RUNTIME_HANDLER = "io.containerd.cri.runtime-handler"

# states, as the CRI enum names them
SANDBOX_READY = "SANDBOX_READY"
SANDBOX_NOTREADY = "SANDBOX_NOTREADY"
SANDBOX_UNKNOWN = "SANDBOX_UNKNOWN"
CONTAINER_CREATED = "CONTAINER_CREATED"
CONTAINER_RUNNING = "CONTAINER_RUNNING"
CONTAINER_EXITED = "CONTAINER_EXITED"
CONTAINER_UNKNOWN = "CONTAINER_UNKNOWN"

# exit reasons (containerd internal/cri/server/helpers.go)
REASON_COMPLETED = "Completed"
REASON_ERROR = "Error"
REASON_OOM_KILLED = "OOMKilled"
REASON_START_ERROR = "StartError"
NAME_DELIMITER = "_"


def make_sandbox_name(metadata: api.PodSandboxMetadata | None) -> str:
    """``<name>_<namespace>_<uid>_<attempt>`` (containerd's ``makeSandboxName``)."""
    m = metadata or api.PodSandboxMetadata()
    return NAME_DELIMITER.join([m.name, m.namespace, m.uid, str(m.attempt)])


def make_container_name(metadata: api.ContainerMetadata | None,
                        sandbox: api.PodSandboxMetadata | None) -> str:
    """``<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>`` (``makeContainerName``)."""
    c = metadata or api.ContainerMetadata()
    s = sandbox or api.PodSandboxMetadata()
    return NAME_DELIMITER.join([c.name, s.name, s.namespace, s.uid, str(c.attempt)])


def build_labels(config_labels: dict[str, str], image_labels: dict[str, str] | None,
                 kind: str) -> dict[str, str]:
    """Container-record labels (containerd ``util.BuildLabels``): image labels outside the
    reserved ``containerd.io/`` and ``io.cri-containerd`` spaces, overridden by the
    request's, plus :data:`KIND_LABEL` = ``kind``."""
    labels: dict[str, str] = {}
    for k, v in (image_labels or {}).items():
        if k.startswith("containerd.io/") or k == CRI_PREFIX or k.startswith(CRI_PREFIX + "."):
            log.warning("skipping image label %r: the label namespace is reserved", k)
            continue
        if not k or len(k) + len(v) > 4096:
            continue
        labels[k] = v
    labels.update(config_labels)
    labels[KIND_LABEL] = kind
    return labels


def go_json(message: Any) -> dict[str, Any]:
    """A CRI message as containerd's verbose ``info`` shows it (Go ``encoding/json`` of the
    gogo struct): snake_case keys, defaults left out, enums and 64-bit integers as numbers."""
    import betterproto2

    return message.to_dict(output_format=betterproto2.OutputFormat.PYTHON, casing=betterproto2.Casing.SNAKE)


def _encode(type_url: str, fields: dict[str, Any]) -> TypedValue:
    return TypedValue(type_url, json.dumps({"Version": METADATA_VERSION, "Metadata": fields},
                                           separators=(",", ":")).encode())


def _decode(value: TypedValue) -> dict[str, Any]:
    data = json.loads(value.value)
    if data.get("Version") != METADATA_VERSION:
        raise InvalidArgument(f"unsupported CRI metadata version {data.get('Version')!r}")
    return data["Metadata"]


def _record_json(record: SandboxRecord | ContainerRecord) -> dict[str, Any]:
    """``record``'s fields as JSON values, ``config`` as its protobuf JSON (``to_dict``).

    Saved on every state change, so kept cheap: the values are the record's own (not the
    deep copies ``dataclasses.asdict`` makes; the result is only serialised, never changed),
    and the config's ``to_dict`` — about a millisecond, betterproto2 resolves the type
    hints of every message on each call — is done once per config object and kept on the
    record (the config of a record is never changed in place, only replaced).
    """
    d = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    cached = record.__dict__.get("_config_json")
    if cached is None or cached[0] is not record.config:
        cached = record.__dict__["_config_json"] = (record.config, record.config.to_dict())
    d["config"] = cached[1]
    return d


@dataclasses.dataclass
class SandboxRecord:
    """One pod sandbox (containerd's ``sandboxstore.Metadata`` + ``Status``).

    ``id`` is also the pause container's and task's ID; ``name`` is
    :func:`make_sandbox_name`. ``netns_path`` is ``""`` for hostNetwork pods;
    ``ip``/``additional_ips`` from the CNI result (``""``/``[]`` with host
    network). ``pid`` is the pause task's pid (0 when not running). Times in ns.
    ``root_dir`` holds ``hostname``, ``hosts``, ``resolv.conf``; ``state_dir``
    holds ``shm`` (the pod's ``/dev/shm`` tmpfs mount).
    """

    id: str
    name: str
    config: api.PodSandboxConfig
    runtime_handler: str = ""
    state: str = SANDBOX_UNKNOWN
    netns_path: str = ""
    ip: str = ""
    additional_ips: list[str] = dataclasses.field(default_factory=list)
    pid: int = 0
    cgroup_parent: str = ""
    created_at: int = 0
    root_dir: str = ""
    state_dir: str = ""
    # -- ours, beyond the shared contract --------------------------------------------------
    #: the sandbox image's ID (``sha256:<config digest>``) and the reference it came from
    image: str = ""
    image_name: str = ""
    #: the shim runtime (``io.containerd.runc.v2``) of the handler
    runtime_type: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""
    #: libcni-shaped result JSON (``{"interfaces": ..., "ips": ..., ...}``) or None
    cni_result: dict[str, Any] | None = None
    #: the pause task's exit (ns, status) once it is gone
    exited_at: int = 0
    exit_code: int = 0
    #: the runtime spec the pause container was created with (OCI JSON)
    spec: dict[str, Any] | None = None

    @property
    def metadata(self) -> api.PodSandboxMetadata:
        return self.config.metadata or api.PodSandboxMetadata()

    @property
    def host_network(self) -> bool:
        opts = self.config.linux.security_context.namespace_options \
            if self.config.linux and self.config.linux.security_context else None
        return bool(opts and opts.network == api.NamespaceMode.NODE)

    @property
    def cri_state(self) -> api.PodSandboxState:
        return (api.PodSandboxState.SANDBOX_READY if self.state == SANDBOX_READY
                else api.PodSandboxState.SANDBOX_NOTREADY)

    def to_json(self) -> dict[str, Any]:
        return _record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxRecord:
        data = dict(data)
        config = api.PodSandboxConfig.from_dict(data.pop("config", {}) or {})
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(config=config, **{k: v for k, v in data.items() if k in known})

    def extension(self) -> TypedValue:
        """The container-record extension (:data:`SANDBOX_EXTENSION`) holding this record."""
        return _encode(SANDBOX_TYPE_URL, self.to_json())

    @classmethod
    def from_extension(cls, value: TypedValue) -> SandboxRecord:
        return cls.from_json(_decode(value))


@dataclasses.dataclass
class ContainerRecord:
    """One CRI container (containerd's ``containerstore.Metadata`` + ``Status``).

    ``name`` is :func:`make_container_name`; ``image_ref`` the image ID
    (``sha256:…``), ``image_name`` the reference asked for; times in ns
    (0 = not yet); ``state`` one of the ``CONTAINER_*`` names.
    """

    id: str
    name: str
    sandbox_id: str
    config: api.ContainerConfig
    image_ref: str = ""
    image_name: str = ""
    log_path: str = ""
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    state: str = CONTAINER_CREATED
    # -- ours, beyond the shared contract --------------------------------------------------
    pid: int = 0
    snapshotter: str = ""
    snapshot_key: str = ""
    runtime_handler: str = ""
    #: the container's runtime spec (OCI JSON), for verbose status
    spec: dict[str, Any] | None = None
    #: resources last applied by UpdateContainerResources (protobuf JSON of LinuxContainerResources)
    resources: dict[str, Any] | None = None
    #: free-form extras other modules need to keep across restarts
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def metadata(self) -> api.ContainerMetadata:
        return self.config.metadata or api.ContainerMetadata()

    @property
    def cri_state(self) -> api.ContainerState:
        return api.ContainerState[self.state] if self.state in api.ContainerState.__members__ \
            else api.ContainerState.CONTAINER_UNKNOWN

    def to_json(self) -> dict[str, Any]:
        return _record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerRecord:
        data = dict(data)
        config = api.ContainerConfig.from_dict(data.pop("config", {}) or {})
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(config=config, **{k: v for k, v in data.items() if k in known})

    def extension(self) -> TypedValue:
        """The container-record extension (:data:`CONTAINER_EXTENSION`) holding this record."""
        return _encode(CONTAINER_TYPE_URL, self.to_json())

    @classmethod
    def from_extension(cls, value: TypedValue) -> ContainerRecord:
        return cls.from_json(_decode(value))


class NameIndex:
    """Reserved names → the ID holding each (containerd's ``registrar``)."""

    def __init__(self) -> None:
        self._by_name: dict[str, str] = {}

    def reserve(self, name: str, id_: str) -> None:
        """Hold ``name`` for ``id_``. Raises AlreadyExists if another ID holds it."""
        if not name or not id_:
            raise InvalidArgument("name and id must not be empty")
        holder = self._by_name.get(name)
        if holder is not None and holder != id_:
            raise AlreadyExists(f"name {name!r} is reserved for {holder!r}")
        self._by_name[name] = id_

    def release(self, name: str) -> None:
        """Free ``name`` (no error when it is not held)."""
        self._by_name.pop(name, None)

    def release_id(self, id_: str) -> None:
        """Free every name ``id_`` holds."""
        for name in [n for n, i in self._by_name.items() if i == id_]:
            del self._by_name[name]

    def get(self, name: str) -> str | None:
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)


def _by_prefix(index: dict[str, Any], id_or_prefix: str, what: str) -> Any:
    if not id_or_prefix:
        raise NotFound(f"{what} ID must not be empty")
    hit = index.get(id_or_prefix)
    if hit is not None:
        return hit
    matches = [k for k in index if k.startswith(id_or_prefix)]
    if not matches:
        raise NotFound(f"{what} {id_or_prefix!r}: not found")
    if len(matches) > 1:
        raise InvalidArgument(f"{what} ID prefix {id_or_prefix!r} is ambiguous")
    return index[matches[0]]


EventBuilder = Callable[[str, "api.ContainerEventType"], "api.ContainerEventResponse | None"]


class CRIState:
    """Pods and containers of the CRI: in memory, persisted in ``k8s.io`` container records.

    ``store`` is the metadata ``ContainerStore``. Records are persisted by
    updating the container record's extension; creating and deleting the
    container records themselves is the RPCs' business (they carry specs,
    snapshots and runtimes), this class only indexes them.
    """

    def __init__(self, store: ContainerStore | None, namespace: str = NAMESPACE) -> None:
        self.store = store
        self.namespace = namespace
        self.sandboxes: dict[str, SandboxRecord] = {}
        self.containers: dict[str, ContainerRecord] = {}
        self.names = NameIndex()
        #: set by the RuntimeService: (container ID, type) → the event to send, or None
        self.event_builder: EventBuilder | None = None
        self._subscribers: set[asyncio.Queue[api.ContainerEventResponse | None]] = set()
        #: per-ID locks serialising lifecycle operations on one pod or container
        self._locks: dict[str, asyncio.Lock] = {}

    # -- loading --------------------------------------------------------------------------

    def load(self) -> tuple[list[Container], list[Container]]:
        """Index every CRI record of the namespace and rebuild the name index.

        Returns the (sandbox, container) metadata records loaded, for recovery.
        Records whose extension cannot be read are logged and skipped.
        """
        sandboxes: list[Container] = []
        containers: list[Container] = []
        if self.store is None:
            return sandboxes, containers
        self.sandboxes.clear()
        self.containers.clear()
        self.names = NameIndex()
        for c in self.store.list(self.namespace):
            kind = c.labels.get(KIND_LABEL)
            try:
                if kind == KIND_SANDBOX and SANDBOX_EXTENSION in c.extensions:
                    sb = SandboxRecord.from_extension(c.extensions[SANDBOX_EXTENSION])
                    self.sandboxes[sb.id] = sb
                    self.names.reserve(sb.name, sb.id)
                    sandboxes.append(c)
                elif kind == KIND_CONTAINER and CONTAINER_EXTENSION in c.extensions:
                    ct = ContainerRecord.from_extension(c.extensions[CONTAINER_EXTENSION])
                    self.containers[ct.id] = ct
                    self.names.reserve(ct.name, ct.id)
                    containers.append(c)
            except Exception as e:
                log.warning("skipping CRI record %s: %s", c.id, e)
        return sandboxes, containers

    # -- sandboxes ------------------------------------------------------------------------

    def get_sandbox(self, id_or_prefix: str) -> SandboxRecord:
        """The sandbox with this ID or unique ID prefix. Raises NotFound, InvalidArgument."""
        return _by_prefix(self.sandboxes, id_or_prefix, "sandbox")

    def add_sandbox(self, record: SandboxRecord) -> None:
        """Index a sandbox whose container record exists (name reserved for it)."""
        self.names.reserve(record.name, record.id)
        self.sandboxes[record.id] = record

    async def save_sandbox(self, record: SandboxRecord) -> None:
        """Persist ``record`` into its container record's extension and index it."""
        await self._save(record.id, SANDBOX_EXTENSION, record.extension())
        self.sandboxes[record.id] = record

    def remove_sandbox(self, id_: str) -> None:
        """Drop a sandbox from the index and release its name (the record is deleted elsewhere)."""
        record = self.sandboxes.pop(id_, None)
        if record is not None and self.names.get(record.name) == id_:
            self.names.release(record.name)

    def sandbox_containers(self, sandbox_id: str) -> list[ContainerRecord]:
        """The containers of a pod, oldest first."""
        return sorted((c for c in self.containers.values() if c.sandbox_id == sandbox_id),
                      key=lambda c: c.created_at)

    # -- containers -----------------------------------------------------------------------

    def get_container(self, id_or_prefix: str) -> ContainerRecord:
        """The container with this ID or unique ID prefix. Raises NotFound, InvalidArgument."""
        return _by_prefix(self.containers, id_or_prefix, "container")

    def add_container(self, record: ContainerRecord) -> None:
        self.names.reserve(record.name, record.id)
        self.containers[record.id] = record

    async def save_container(self, record: ContainerRecord) -> None:
        """Persist ``record`` (status changes included) and index it."""
        await self._save(record.id, CONTAINER_EXTENSION, record.extension())
        self.containers[record.id] = record

    def remove_container(self, id_: str) -> None:
        record = self.containers.pop(id_, None)
        if record is not None and self.names.get(record.name) == id_:
            self.names.release(record.name)

    # -- persistence ----------------------------------------------------------------------

    async def _save(self, id_: str, key: str, value: TypedValue) -> None:
        if self.store is None:
            return
        await self.store.update_extension(self.namespace, id_, key, value)

    def lock(self, id_: str) -> asyncio.Lock:
        """The lock serialising lifecycle changes of pod or container ``id_``."""
        lock = self._locks.get(id_)
        if lock is None:
            lock = self._locks[id_] = asyncio.Lock()
        return lock

    def forget_lock(self, id_: str) -> None:
        self._locks.pop(id_, None)

    # -- container events -----------------------------------------------------------------

    def container_event(self, container_id: str, event_type: api.ContainerEventType) -> None:
        """Send a CRI container event to every ``GetContainerEvents`` subscriber (never blocks)."""
        if not self._subscribers:
            return
        event = None
        if self.event_builder is not None:
            try:
                event = self.event_builder(container_id, event_type)
            except Exception:
                log.exception("building container event for %s", container_id)
        if event is None:
            event = api.ContainerEventResponse(container_id=container_id, container_event_type=event_type,
                                               created_at=time.time_ns())
        for q in list(self._subscribers):
            q.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe_events(self) -> AsyncIterator[AsyncIterator[api.ContainerEventResponse]]:
        """Every container event from now on, until the context exits or :meth:`close_events`."""
        q: asyncio.Queue[api.ContainerEventResponse | None] = asyncio.Queue()
        self._subscribers.add(q)

        async def events() -> AsyncIterator[api.ContainerEventResponse]:
            while True:
                item = await q.get()
                if item is None:
                    return
                yield item

        try:
            yield events()
        finally:
            self._subscribers.discard(q)

    def close_events(self) -> None:
        """End every subscription (daemon shutdown)."""
        for q in list(self._subscribers):
            q.put_nowait(None)

    def subscriber_count(self) -> int:
        return len(self._subscribers)
