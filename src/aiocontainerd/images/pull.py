"""Pull an image from a registry into the content store and name it (daemon side).

Steps, as containerd's client pull (``Fetch``) does them, under a lease that
holds everything until the image exists:

1. resolve the reference to the descriptor of its manifest or index;
2. walk the tree: fetch each manifest/index (verified, size-limited), commit
   it with the GC labels of its children and the distribution-source label;
   an index keeps the best match for the platform (all of them with
   ``all_platforms``);
3. fetch configs and layers, ``max_concurrent`` at a time, each resumable
   (an ingest left by a broken or killed pull continues where it stopped),
   verified, committed with the distribution-source label; blobs already in
   the namespace are kept, blobs stored by another namespace are shared
   without download; non-distributable layers are skipped, as containerd does;
4. unpack, if asked, into a snapshotter — layer by layer as each arrives;
5. create the image (or move an existing one to the new target).

Progress is reported through a callback with one :class:`Progress` per blob
event. Errors are the remotes' (NotFound, FailedPrecondition, Unavailable,
Unimplemented for schema 1, InvalidArgument for limits); a failed pull leaves
no image changed; its lease goes with it, so what it downloaded is collected
(as containerd's client does). A pull interrupted by a daemon crash resumes its
ingests from the lease, which outlives the crash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import AlreadyExists, Unavailable
from ..metadata.content import Info
from ..metadata.images import Image
from ..metadata.leases import Resource
from ..metadata.plugin import Metadata
from ..remotes import limits as rlimits
from ..remotes import mediatypes as mt
from ..remotes import platforms, reference
from ..remotes.descriptor import Descriptor
from ..remotes.fetch import fetch_blob
from ..remotes.fetcher import Fetcher
from ..remotes.resolver import Resolver
from ..types import Descriptor as CoreDescriptor
from .labels import gc_labels, source_label

DEFAULT_CONCURRENCY = 3


@dataclasses.dataclass(frozen=True)
class PullOptions:
    """``platform``: which manifests of an index to take (default: the host's, best match
    only); ``all_platforms``: every manifest; ``labels``: put on the image;
    ``max_concurrent``: blobs downloaded at once; ``snapshotter``: unpack there too
    (the platform's manifest), layer by layer as they arrive."""

    platform: platforms.MatchComparer | None = None
    all_platforms: bool = False
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    max_concurrent: int = DEFAULT_CONCURRENCY
    #: unpack into this snapshotter while downloading ("" : content only)
    snapshotter: str = ""
    #: which manifest to unpack (default: ``platform``, else the host's)
    unpack_platform: platforms.MatchComparer | None = None


@dataclasses.dataclass(frozen=True)
class Progress:
    """One blob's state: ``status`` is waiting, downloading, done, exists or skipped."""

    key: str
    digest: str
    media_type: str
    offset: int
    total: int
    status: str


ProgressCallback = Callable[[Progress], None]


def ref_key(desc: Descriptor) -> str:
    """The ingest ref of a blob, as containerd's ``remotes.MakeRefKey`` names it."""
    if mt.is_index(desc.media_type):
        kind = "index"
    elif mt.is_manifest(desc.media_type):
        kind = "manifest"
    elif mt.is_layer(desc.media_type):
        kind = "layer"
    elif mt.is_config(desc.media_type):
        kind = "config"
    else:
        kind = "unknown"
    return f"{kind}-{desc.digest}"


async def open_writer(metadata: Metadata, namespace: str, ref: str, desc: Descriptor,
                      lease: str | None) -> Any:
    """A content writer for ``desc``, waiting while another writer holds ``ref``.

    Like containerd's ``content.OpenWriter``: a locked ref is retried with
    growing pauses (up to ~2 s each); if the blob appeared meanwhile (the other
    writer committed it), AlreadyExists is raised so the caller skips it.
    """
    pause = 0.016
    while True:
        try:
            return await metadata.content.writer(namespace, ref, desc.size, desc.digest, lease)
        except Unavailable:
            if metadata.content.has(namespace, desc.digest):
                raise AlreadyExists(f"content {desc.digest}: already exists") from None
            await asyncio.sleep(random.uniform(pause / 2, pause))
            pause = min(pause * 2, 2.048)


class _Writer:
    """Adapts a namespaced content writer to what remotes.fetch_blob expects."""

    def __init__(self, w: Any, desc: Descriptor, labels: dict[str, str],
                 report: Callable[[int], None]) -> None:
        self._w = w
        self._labels = labels
        self._report = report
        self._desc = desc

    @property
    def offset(self) -> int:
        return self._w.offset

    def digest(self) -> str:
        return self._w.digest()

    async def write(self, data: bytes | memoryview) -> None:
        await self._w.write(data)
        self._report(self._w.offset)

    async def truncate(self, size: int) -> None:
        await self._w.truncate(size)

    async def commit(self, size: int = 0, expected: str = "") -> str:
        return (await self._w.commit(size, expected, self._labels)).digest


def _expires(hours: int = 24) -> str:
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=hours)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Pull:
    def __init__(self, metadata: Metadata, namespace: str, lease: str, fetcher: Fetcher,
                 source: tuple[str, str], limits: rlimits.Limits, options: PullOptions,
                 progress: ProgressCallback | None) -> None:
        self.m = metadata
        self.ns = namespace
        self.lease = lease
        self.fetcher = fetcher
        self.source = source
        self.limits = limits
        self.options = options
        self.progress = progress or (lambda p: None)
        self.matcher = options.platform or platforms.default_matcher()
        self.arrived: dict[str, asyncio.Event] = {}

    async def ready(self, digest: str) -> None:
        """Wait until blob ``digest`` is in the store (for a pipelined unpack)."""
        event = self.arrived.get(digest)
        if event is not None:
            await event.wait()

    def _labels(self, existing: Mapping[str, str] | None = None) -> dict[str, str]:
        key, repo = self.source
        current = (existing or {}).get(key, "")
        repos = {r for r in current.split(",") if r} | {repo}
        return {key: ",".join(sorted(repos))}  # sorted and unique, as containerd keeps them

    async def _hold(self, digest: str) -> None:
        await self.m.leases.add_resource(self.ns, self.lease, Resource(digest, "content"))

    async def manifest(self, desc: Descriptor) -> list[Descriptor]:
        """Fetch (or find) a manifest/index, commit it with its labels; its children."""
        content = self.m.content
        if content.has(self.ns, desc.digest):
            await self._hold(desc.digest)
            body = await content.read_all(self.ns, desc.digest)
        else:
            self.limits.check_manifest_size(desc.size, desc.digest)
            body = await self.fetcher.read(desc)
        kids = rlimits.children(desc, body, self.limits)
        if mt.is_index(desc.media_type):
            kids = self._select(kids)
        labels = {**gc_labels(desc, kids)}
        if content.has(self.ns, desc.digest):
            labels.update(self._labels(content.info(self.ns, desc.digest).labels))
            await content.update(self.ns, Info(desc.digest, desc.size, labels=labels),
                                 [f"labels.{k}" for k in labels])
        else:
            labels.update(self._labels())
            try:
                w = await open_writer(self.m, self.ns, ref_key(desc), desc, self.lease)
            except AlreadyExists:
                await self._hold(desc.digest)
                return kids if mt.is_index(desc.media_type) else []
            try:
                if not content.local.exists(desc.digest):
                    await w.write(body)
                await w.commit(desc.size, desc.digest, labels)
            except AlreadyExists:
                pass
            finally:
                w.close()
        self.progress(Progress(ref_key(desc), desc.digest, desc.media_type, desc.size, desc.size, "done"))
        return kids if mt.is_index(desc.media_type) else []

    def _select(self, kids: list[Descriptor]) -> list[Descriptor]:
        if self.options.all_platforms:
            return kids
        return self.matcher.select(kids, limit=1)

    async def blob(self, desc: Descriptor, sem: asyncio.Semaphore) -> None:
        key = ref_key(desc)
        content = self.m.content
        if mt.is_non_distributable(desc.media_type):
            self.progress(Progress(key, desc.digest, desc.media_type, 0, desc.size, "skipped"))
            self.arrived[desc.digest].set()
            return
        if content.has(self.ns, desc.digest):
            await self._hold(desc.digest)
            self.progress(Progress(key, desc.digest, desc.media_type, desc.size, desc.size, "exists"))
            self.arrived[desc.digest].set()
            return
        self.progress(Progress(key, desc.digest, desc.media_type, 0, desc.size, "waiting"))
        async with sem:
            try:
                w = await open_writer(self.m, self.ns, key, desc, self.lease)
            except AlreadyExists:
                await self._hold(desc.digest)
                self.progress(Progress(key, desc.digest, desc.media_type, desc.size, desc.size, "exists"))
                self.arrived[desc.digest].set()
                return
            try:
                labels = self._labels()
                if content.local.exists(desc.digest):
                    await w.commit(desc.size, desc.digest, labels)  # shared: no download
                else:
                    def report(offset: int) -> None:
                        self.progress(Progress(key, desc.digest, desc.media_type, offset, desc.size,
                                               "downloading"))

                    await fetch_blob(self.fetcher, desc, _Writer(w, desc, labels, report))
            except AlreadyExists:
                pass
            finally:
                w.close()
        self.progress(Progress(key, desc.digest, desc.media_type, desc.size, desc.size, "done"))
        self.arrived[desc.digest].set()


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first error of a task group, unwrapped, so it keeps its gRPC code."""
    e: BaseException = group
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


async def pull(ref: str, *, resolver: Resolver, metadata: Metadata, namespace: str,
               options: PullOptions = PullOptions(),
               progress: ProgressCallback | None = None, diff: object = None) -> Image:
    """Pull ``ref`` into ``namespace`` (see the module doc); returns the image.

    With ``options.snapshotter``, ``diff`` (the diff service) unpacks the image
    while its layers download (see :mod:`.unpack`).
    """
    name, root = await resolver.resolve(ref)
    parsed = reference.parse(name)
    lease = f"pull-{uuid.uuid4().hex}"
    await metadata.leases.create(namespace, lease, {"containerd.io/gc.expire": _expires()})
    try:
        job = _Pull(metadata, namespace, lease, resolver.fetcher(parsed), source_label(parsed),
                    resolver.limits, options, progress)
        manifests: list[Descriptor] = []

        async def get_children(desc: Descriptor) -> list[Descriptor]:
            if mt.is_manifest(desc.media_type):
                manifests.append(desc)
                return []
            if mt.is_index(desc.media_type):
                return await job.manifest(desc)
            return []

        await rlimits.walk(root, get_children, resolver.limits)
        sem = asyncio.Semaphore(max(1, options.max_concurrent))
        blobs: dict[str, Descriptor] = {}
        for m in manifests:
            await job.manifest(m)
            body = await metadata.content.read_all(namespace, m.digest)
            for kid in rlimits.children(m, body, resolver.limits):
                blobs.setdefault(kid.digest, kid)
        job.arrived = {d: asyncio.Event() for d in blobs}
        try:
            async with asyncio.TaskGroup() as tg:  # one failure cancels the other downloads
                for d in blobs.values():
                    tg.create_task(job.blob(d, sem))
                if options.snapshotter:
                    from .unpack import unpack

                    tg.create_task(unpack(root, metadata=metadata, diff=diff,
                                          snapshotter=options.snapshotter, namespace=namespace,
                                          lease=lease, matcher=options.unpack_platform or options.platform,
                                          ready=job.ready))
        except BaseExceptionGroup as group:
            raise _first(group) from None
        image = Image(name, CoreDescriptor(root.media_type, root.digest, root.size),
                      dict(options.labels))
        try:
            return await metadata.images.create(namespace, image)
        except AlreadyExists:
            return await metadata.images.update(namespace, image, ["target", "labels"]
                                                if options.labels else ["target"])
    finally:
        await metadata.leases.delete(namespace, lease)
