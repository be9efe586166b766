"""``containerd.services.transfer.v1.Transfer`` (plugin ``io.containerd.grpc.v1.transfer``).

containerd 2.x moves images through this one call: the client names a
*source* and a *destination* (``google.protobuf.Any`` of the
``containerd.types.transfer`` messages) and the daemon does the work. As
containerd's ``plugins/services/transfer`` with ``core/transfer/local``,
the pairs served are:

========================  =====================  ======================================
source                    destination            operation (core ``ImageService`` call)
========================  =====================  ======================================
``OCIRegistry``           ``ImageStore``         pull
``ImageStore``            ``OCIRegistry``        push
``ImageImportStream``     ``ImageStore``         import a tar read from a named stream
``ImageStore``            ``ImageExportStream``  export a tar written to a named stream
``ImageStore``            ``ImageStore``         tag (the source's target under new names)
========================  =====================  ======================================

Other types or pairs are Unimplemented. Named streams come from the
Streaming service (:mod:`.streaming`), looked up in the request's namespace:

- ``TransferOptions.progress_stream`` receives ``containerd.types.transfer.Progress``
  events as containerd's progress tracker sends them: status lines without a
  name (``Resolving from …``, ``Pulling from …``, ``Completed pull from …``),
  then per blob ``waiting`` → ``downloading``/``uploading`` (byte counts, at
  most every 0.1 s) → ``complete`` or ``already exists``, with ``name`` the
  ingest ref (``layer-sha256:…``) and ``parents`` the refs of the manifests or
  index above it (the image name at the top), then ``saved`` per image;
- ``RegistryResolver.auth_stream`` answers ``AuthRequest{host, reference}`` with
  ``AuthResponse`` (containerd's registry credential callback);
- ``ImageImportStream.stream`` carries the archive, spooled to a temporary file
  under this plugin's state folder before the import;
- ``ImageExportStream.stream`` receives the archive, with flow control.

What the core does not do yet is refused, not ignored: per-request registry
headers and hosts folders, keeping an imported archive's index under a name,
``AUTH_TYPE_HEADER`` credentials. Two pull options only shape what is
fetched and are not honoured yet: ``all_metadata`` (the manifests and configs
of other platforms too) and ``manifest_limit``; the core takes the best
manifest of each platform asked for. Unpack requests are skipped (no
snapshotter can unpack yet), as containerd skips unpack configurations it has
no snapshotter for. Credentials from an auth stream are asked for once per
registry host of the reference, before the pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import tarfile
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import betterproto2

from ..api.containerd import types as ctypes
from ..api.containerd.services.transfer import v1 as api
from ..api.containerd.types import transfer as tt
from ..api.google import protobuf as pb
from ..errors import AlreadyExists, InvalidArgument, NotFound, Unavailable, Unimplemented
from ..images.service import TRANSFER, ImageService
from ..metadata.images import Image
from ..plugin import GRPC, InitContext, Registration
from . import context
from .convert import descriptor
from .streaming import (
    MANAGER_PLUGIN,
    STREAMING,
    ServerStream,
    StreamManager,
    WindowedWriter,
    is_type,
    receive_stream,
    type_name,
    type_url,
    unpack,
)
from .streaming import PLUGIN as STREAMING_PLUGIN

if TYPE_CHECKING:
    from ..images.pull import Progress as PullProgress
    from ..remotes.descriptor import Descriptor as RemoteDescriptor
    from ..remotes.pusher import PushResult

log = logging.getLogger(__name__)

#: how long the daemon waits for a client to answer a credentials request
AUTH_TIMEOUT = 60.0
#: at most one byte-count update per blob this often (containerd's tracker polls every 0.3 s)
PROGRESS_INTERVAL = 0.1
SPOOL_CHUNK = 1 << 20
SPOOL_PREFIX = "import-"

_OBJECTS: dict[str, type[betterproto2.Message]] = {type_url(c): c for c in (
    tt.OciRegistry, tt.ImageStore, tt.ImageImportStream, tt.ImageExportStream)}


def _decode(value: pb.Any | None, what: str) -> betterproto2.Message:
    if value is None or not value.type_url:
        raise InvalidArgument(f"transfer {what} must be set")
    cls = _OBJECTS.get(type_name(value.type_url))
    if cls is None:
        raise Unimplemented(f"transfer {what} {value.type_url} is not supported")
    return unpack(value, cls)


def _platform_specs(items: Sequence[ctypes.Platform]) -> list[str]:
    from ..remotes import platforms

    return [platforms.format(platforms.Platform(p.os, p.architecture, p.variant, p.os_version,
                                                tuple(p.os_features))) for p in items]


def _wire_descriptor(media_type: str, digest: str, size: int) -> ctypes.Descriptor:
    return ctypes.Descriptor(media_type=media_type, digest=digest, size=size)


def _ref_key(media_type: str, digest: str) -> str:
    from ..images.pull import ref_key
    from ..remotes.descriptor import Descriptor as RemoteDescriptor

    return ref_key(RemoteDescriptor(media_type, digest, 0))


# -- progress -----------------------------------------------------------------------------------

class _ProgressSender:
    """Sends ``Progress`` on the progress stream, in order, from synchronous callbacks.

    Byte counts (``downloading``/``uploading``) are coalesced per name: a
    round sends what has queued, then waits :data:`PROGRESS_INTERVAL`. A client
    that stops listening costs nothing but a debug log: the transfer goes on.
    """

    def __init__(self, stream: ServerStream) -> None:
        self._stream = stream
        self._queue: list[tt.Progress] = []
        self._counts: dict[str, tt.Progress] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._broken = False
        self._task = asyncio.create_task(self._run())

    def event(self, event: str, name: str = "", parents: Sequence[str] = (), progress: int = 0,
              total: int = 0, desc: ctypes.Descriptor | None = None) -> None:
        self._queue.append(tt.Progress(event=event, name=name, parents=list(parents),
                                       progress=progress, total=total, desc=desc))
        self._counts.pop(name, None)
        self._wake.set()

    def count(self, event: str, name: str, parents: Sequence[str], progress: int, total: int,
              desc: ctypes.Descriptor | None) -> None:
        pending = self._counts.get(name)
        if pending is not None:
            pending.progress, pending.total = progress, total
            return
        message = tt.Progress(event=event, name=name, parents=list(parents), progress=progress,
                              total=total, desc=desc)
        self._counts[name] = message
        self._queue.append(message)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            self._counts.clear()
            for message in batch:
                if self._broken:
                    break
                try:
                    await self._stream.send(message)
                except Unavailable as e:
                    self._broken = True
                    log.debug("progress not sent", extra={"fields": {"error": e.message}})
            if self._closing and not self._queue:
                return
            await asyncio.sleep(PROGRESS_INTERVAL)

    async def aclose(self) -> None:
        """Send what is queued, then close the stream (the client sees its end)."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 10)
        except TimeoutError:
            self._task.cancel()
        await self._stream.close()


class _Tree:
    """Names and parents of the blobs of one image, for progress events (containerd's
    ``ProgressTracker``): the top has the image name as its parent; children learn their
    parents when a manifest or index is read."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.parents: dict[str, list[str]] = {}
        self.seen: set[str] = set()

    def add_children(self, parent_key: str, children: Sequence[RemoteDescriptor]) -> None:
        for kid in children:
            found = self.parents.setdefault(kid.digest, [])
            if parent_key not in found:
                found.append(parent_key)

    def parents_of(self, digest: str) -> list[str]:
        return self.parents.get(digest) or [self.root]


class _PullProgress:
    """Core pull progress → containerd's events, through an ordered queue so that the
    children of each manifest are known (read from the content store) before theirs."""

    def __init__(self, sender: _ProgressSender, service: ImageService, namespace: str,
                 name: str) -> None:
        self.sender = sender
        self.service = service
        self.namespace = namespace
        self.tree = _Tree(name)
        self.started = False
        self._queue: asyncio.Queue[PullProgress | None] = asyncio.Queue()
        self._latest: dict[str, PullProgress] = {}
        self._task = asyncio.create_task(self._run())

    def __call__(self, p: PullProgress) -> None:
        if p.status == "downloading":
            if p.key in self._latest:
                self._latest[p.key] = p
                return
            self._latest[p.key] = p
        self._queue.put_nowait(p)

    async def _run(self) -> None:
        while (p := await self._queue.get()) is not None:
            if p.status == "downloading":
                p = self._latest.pop(p.key, p)
            try:
                await self._handle(p)
            except Exception:  # progress must never fail a pull
                log.exception("progress event dropped")

    async def _handle(self, p: PullProgress) -> None:
        from ..remotes import mediatypes

        s, tree = self.sender, self.tree
        desc = _wire_descriptor(p.media_type, p.digest, p.total)
        if not self.started:
            self.started = True
            s.event("fetching image content", tree.root, desc=desc)
        if p.status == "done" and mediatypes.is_manifest_or_index(p.media_type):
            await self._learn_children(p)
        parents = tree.parents_of(p.digest)
        if p.key not in tree.seen:
            tree.seen.add(p.key)
            s.event("waiting", p.key, parents, 0, p.total, desc)
        if p.status == "downloading":
            s.count("downloading", p.key, parents, p.offset, p.total, desc)
        elif p.status == "done":
            s.event("complete", p.key, parents, p.total, p.total, desc)
        elif p.status == "exists":
            s.event("already exists", p.key, parents, p.total, p.total, desc)

    async def _learn_children(self, p: PullProgress) -> None:
        from ..remotes import limits
        from ..remotes.descriptor import Descriptor as RemoteDescriptor

        content = self.service.metadata.content
        with contextlib.suppress(Exception):
            body = await content.read_all(self.namespace, p.digest)
            kids = limits.children(RemoteDescriptor(p.media_type, p.digest, p.total), body)
            self.tree.add_children(p.key, kids)

    async def aclose(self) -> None:
        self._queue.put_nowait(None)
        await self._task


class _PushProgress:
    """Core push results → containerd's events (parents from the image's tree)."""

    def __init__(self, sender: _ProgressSender, tree: _Tree) -> None:
        self.sender = sender
        self.tree = tree

    def __call__(self, desc: RemoteDescriptor, result: PushResult) -> None:
        key = _ref_key(desc.media_type, desc.digest)
        wire = _wire_descriptor(desc.media_type, desc.digest, desc.size)
        parents = self.tree.parents_of(desc.digest)
        if key not in self.tree.seen:
            self.tree.seen.add(key)
            self.sender.event("waiting", key, parents, 0, desc.size, wire)
        event = "already exists" if result.exists or result.mounted_from else "complete"
        self.sender.event(event, key, parents, desc.size, desc.size, wire)


# -- registry options -----------------------------------------------------------------------------

@dataclasses.dataclass
class _Registry:
    reference: str
    plain_http: bool
    credentials: dict[str, tuple[str, str]]


# -- the service ----------------------------------------------------------------------------------

class TransferService(api.TransferBase):
    """The Transfer gRPC service over the core :class:`ImageService` (see the module doc)."""

    def __init__(self, images: ImageService, streams: StreamManager, state: Path) -> None:
        self.images = images
        self.streams = streams
        self.state = state

    async def transfer(self, message: api.TransferRequest) -> pb.Empty:
        namespace = context.namespace()
        source = _decode(message.source, "source")
        destination = _decode(message.destination, "destination")
        progress_id = message.options.progress_stream if message.options is not None else ""
        sender = None
        if progress_id:
            sender = _ProgressSender(self.streams.get(namespace, progress_id))
        try:
            match source, destination:
                case tt.OciRegistry(), tt.ImageStore():
                    await self._pull(namespace, source, destination, sender)
                case tt.ImageStore(), tt.OciRegistry():
                    await self._push(namespace, source, destination, sender)
                case tt.ImageImportStream(), tt.ImageStore():
                    await self._import(namespace, source, destination, sender)
                case tt.ImageStore(), tt.ImageExportStream():
                    await self._export(namespace, source, destination, sender)
                case tt.ImageStore(), tt.ImageStore():
                    await self._tag(namespace, source, destination, sender)
                case _:
                    raise Unimplemented(
                        f"method Transfer not implemented for {message.source.type_url} to "
                        f"{message.destination.type_url}")
        finally:
            if sender is not None:
                await sender.aclose()
        return pb.Empty()

    # -- registry ----------------------------------------------------------------------------

    async def _registry(self, namespace: str, reg: tt.OciRegistry) -> _Registry:
        """The resolver options of ``reg`` (containerd's ``OCIRegistry.UnmarshalAny``)."""
        from ..remotes import reference

        if not reg.reference:
            raise InvalidArgument("registry reference must be set")
        parsed = reference.parse(reg.reference)
        r = reg.resolver or tt.RegistryResolver()
        if r.default_scheme not in ("", "http", "https"):
            raise InvalidArgument(f"registry default scheme {r.default_scheme!r}: must be http or https")
        if r.headers:
            raise Unimplemented("per-request registry headers are not supported by this daemon")
        if r.host_dir:
            raise Unimplemented("a per-request hosts directory is not supported by this daemon; set "
                                f'config_path in [plugins."{TRANSFER}.local"]')
        if r.http_debug != tt.HttpDebug.DISABLED:
            log.info("registry HTTP debugging is not supported; ignored")
        plain_http = r.default_scheme == "http"
        credentials: dict[str, tuple[str, str]] = {}
        if r.auth_stream:
            stream = self.streams.get(namespace, r.auth_stream)
            async with self.images.resolver(plain_http=plain_http) as resolver:
                hosts = [h.host for h in resolver.hosts(parsed.domain)]
            for host in dict.fromkeys(hosts):
                found = await _ask_credentials(stream, host, reg.reference)
                if found is not None:
                    credentials[host] = found
        return _Registry(reg.reference, plain_http, credentials)

    async def _pull(self, namespace: str, src: tt.OciRegistry, dst: tt.ImageStore,
                    sender: _ProgressSender | None) -> None:
        from ..remotes import reference

        registry = await self._registry(namespace, src)
        name = str(reference.parse(src.reference))
        described = f"OCI Registry ({src.reference})"
        snapshotter, unpack_platforms = "", list(_platform_specs(dst.platforms))
        if dst.unpacks:
            # one unpack per pull: the first configuration (containerd 2.x's ctr sends one)
            first = dst.unpacks[0]
            snapshotter = first.snapshotter or "overlayfs"
            if first.platform is not None:
                unpack_platforms = _platform_specs([first.platform])
        tracker = None
        if sender is not None:
            sender.event(f"Resolving from {described}")
            sender.event(f"Pulling from {described}")
            tracker = _PullProgress(sender, self.images, namespace, name)
        try:
            image = await self.images.pull(
                namespace, src.reference, platform_specs=_platform_specs(dst.platforms),
                all_platforms=not dst.platforms, labels=dict(dst.labels),
                credentials=registry.credentials, plain_http=registry.plain_http, progress=tracker,
                snapshotter=snapshotter, unpack_platforms=unpack_platforms)
        finally:
            if tracker is not None:
                await tracker.aclose()
        saved = [image]
        names = [n for n in [dst.name, *(r.name for r in dst.extra_references if not r.is_prefix)]
                 if n and n != image.name]
        for extra in names:
            saved.append(await self._store(namespace, Image(extra, image.target, dict(dst.labels))))
        if sender is not None:
            for img in saved:
                sender.event("saved", img.name, desc=descriptor(img.target))
            sender.event(f"Completed pull from {described}")

    async def _push(self, namespace: str, src: tt.ImageStore, dst: tt.OciRegistry,
                    sender: _ProgressSender | None) -> None:
        if not src.name:
            raise InvalidArgument("the image to push must be named")
        registry = await self._registry(namespace, dst)
        image = self.images.metadata.images.get(namespace, src.name)
        described = f"OCI Registry ({dst.reference})"
        callback = None
        if sender is not None:
            sender.event(f"Pushing to {described}")
            sender.event("pushing content", image.name, desc=descriptor(image.target))
            callback = _PushProgress(sender, await self._tree(namespace, image))
        await self.images.push(namespace, src.name, dst.reference,
                               platform_specs=_platform_specs(src.platforms),
                               credentials=registry.credentials, plain_http=registry.plain_http,
                               progress=callback)
        if sender is not None:
            sender.event("pushed content", image.name, desc=descriptor(image.target))
            sender.event(f"Completed push to {described}", desc=descriptor(image.target))

    async def _tree(self, namespace: str, image: Image) -> _Tree:
        """The parents of every blob under ``image`` that the content store has."""
        from ..remotes import limits, mediatypes
        from ..remotes.descriptor import Descriptor as RemoteDescriptor

        content = self.images.metadata.content
        tree = _Tree(image.name)
        t = image.target

        async def get_children(desc: RemoteDescriptor) -> list[RemoteDescriptor]:
            if not mediatypes.is_manifest_or_index(desc.media_type) or \
                    not content.has(namespace, desc.digest):
                return []
            body = await content.read_all(namespace, desc.digest)
            kids = limits.children(desc, body)
            tree.add_children(_ref_key(desc.media_type, desc.digest), kids)
            return kids

        with contextlib.suppress(Exception):
            await limits.walk(RemoteDescriptor(t.media_type, t.digest, t.size), get_children)
        return tree

    # -- archives ----------------------------------------------------------------------------

    async def _import(self, namespace: str, src: tt.ImageImportStream, dst: tt.ImageStore,
                      sender: _ProgressSender | None) -> None:
        stream = self.streams.get(namespace, src.stream)
        if dst.name:
            await stream.close()
            raise Unimplemented("keeping the archive's index as an image (index name) is not supported")
        prefixes = [r for r in dst.extra_references if r.is_prefix]
        base_name = prefixes[0].name if prefixes else ""
        if sender is not None:
            sender.event("Importing")
        path = await self._spool(stream)
        try:
            imported = await self.images.import_archive(namespace, path, base_name=base_name)
        except tarfile.TarError as e:  # a tar cut short inside an entry: bad input, not Unknown
            raise InvalidArgument(f"corrupt tar archive: {e}") from None
        finally:
            await asyncio.to_thread(path.unlink, True)
        if dst.labels:
            labelled = []
            for img in imported:
                img.labels.update(dst.labels)
                labelled.append(self.images.stored(namespace, await self.images.metadata.images.update(
                    namespace, img, [f"labels.{k}" for k in dst.labels]), created=False))
            imported = labelled
        if sender is not None:
            for img in imported:
                sender.event("saved", img.name, desc=descriptor(img.target))
            sender.event("Completed import")

    async def _spool(self, stream: ServerStream) -> Path:
        """Receive the archive on ``stream`` into a temporary file under the state folder."""
        await asyncio.to_thread(self.state.mkdir, 0o700, True, True)
        fd, name = await asyncio.to_thread(tempfile.mkstemp, ".tar", SPOOL_PREFIX, str(self.state))
        path = Path(name)
        f = os.fdopen(fd, "wb")
        buffered: list[bytes] = []
        size = 0

        async def flush() -> None:
            nonlocal size
            chunks, buffered[:], size = list(buffered), [], 0
            await asyncio.to_thread(f.write, b"".join(chunks))

        async def write(data: bytes) -> None:
            nonlocal size
            buffered.append(data)
            size += len(data)
            if size >= SPOOL_CHUNK:
                await flush()

        try:
            await receive_stream(stream, write)
            await flush()
            await asyncio.to_thread(f.close)
        except BaseException:
            await asyncio.to_thread(f.close)
            await asyncio.to_thread(path.unlink, True)
            raise
        finally:
            await stream.close()
        return path

    async def _export(self, namespace: str, src: tt.ImageStore, dst: tt.ImageExportStream,
                      sender: _ProgressSender | None) -> None:
        from ..remotes import platforms

        stream = self.streams.get(namespace, dst.stream)
        try:
            names = self._lookup(src)
            for name in names:
                self.images.metadata.images.get(namespace, name)  # NotFound before any byte is sent
            if dst.all_platforms:
                specs: list[str] = []
            elif dst.platforms:
                specs = _platform_specs(dst.platforms)
            else:
                specs = [platforms.default_string()]
            if sender is not None:
                sender.event("Exporting")
            writer = _ThreadWriter(WindowedWriter(stream))
            try:
                await self.images.export_archive(namespace, writer, names, platform_specs=specs)
                await writer.drain()
            finally:
                await writer.close()
        finally:
            await stream.close()
        if sender is not None:
            sender.event("Completed export")

    @staticmethod
    def _lookup(src: tt.ImageStore) -> list[str]:
        """The names an ImageStore source selects (containerd's ``Store.Lookup``)."""
        names = [src.name] if src.name else []
        for ref in src.extra_references:
            if ref.is_prefix:
                raise Unimplemented("prefix lookup on export not implemented")
            names.append(ref.name)
        if not names:
            raise InvalidArgument("name at least one image")
        return names

    async def _tag(self, namespace: str, src: tt.ImageStore, dst: tt.ImageStore,
                   sender: _ProgressSender | None) -> None:
        if not src.name:
            raise InvalidArgument("the source image must be named")
        image = self.images.metadata.images.get(namespace, src.name)
        names = [n for n in [dst.name, *(r.name for r in dst.extra_references if not r.is_prefix)] if n]
        if not names:
            raise NotFound("no image name found")
        for name in names:
            stored = await self._store(namespace, Image(name, image.target, dict(dst.labels)))
            if sender is not None:
                sender.event("saved", stored.name, desc=descriptor(stored.target))

    async def _store(self, namespace: str, image: Image) -> Image:
        """Create ``image``, or point the existing one at its target (``Store.Store``)."""
        store = self.images.metadata.images
        try:
            return self.images.stored(namespace, await store.create(namespace, image), created=True)
        except AlreadyExists:
            return self.images.stored(namespace, await store.update(
                namespace, image, ["target", "labels"] if image.labels else ["target"]), created=False)


async def _ask_credentials(stream: ServerStream, host: str, ref: str) -> tuple[str, str] | None:
    """One credentials round trip on an auth stream (containerd's ``credCallback``)."""
    await stream.send(tt.AuthRequest(host=host, reference=ref))
    try:
        answer = await asyncio.wait_for(stream.recv(), AUTH_TIMEOUT)
    except TimeoutError:
        raise Unavailable(f"no credentials for {host} from the client within {AUTH_TIMEOUT:.0f}s") \
            from None
    if answer is None:
        return None
    if not is_type(answer, tt.AuthResponse):
        raise InvalidArgument(f"auth stream: expected an AuthResponse, got {answer.type_url}")
    r = unpack(answer, tt.AuthResponse)
    if r.auth_type == tt.AuthType.CREDENTIALS:
        return r.username, r.secret
    if r.auth_type == tt.AuthType.REFRESH and r.secret:
        return "", r.secret
    if r.auth_type == tt.AuthType.HEADER:
        raise Unimplemented("authorization header credentials are not supported by this daemon")
    return None


class _ThreadWriter:
    """A file object for a worker thread (the archive writer) that sends on a byte stream.

    Writes are buffered to 1 MiB and handed to the event loop, the thread
    waiting for each to be sent (so the stream's flow control reaches the tar
    writer). Calling :meth:`write` on the loop's own thread is an error: it
    would deadlock.
    """

    def __init__(self, writer: WindowedWriter) -> None:
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._buffer = bytearray()
        self._failed: BaseException | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("_ThreadWriter.write must run in a worker thread")
        if self._failed is not None:
            raise OSError(f"export stream failed: {self._failed}")
        self._buffer += data
        if len(self._buffer) >= SPOOL_CHUNK:
            chunk, self._buffer = bytes(self._buffer), bytearray()
            future = asyncio.run_coroutine_threadsafe(self._writer.write(chunk), self._loop)
            try:
                future.result()
            except BaseException as e:
                self._failed = e
                raise OSError(f"export stream failed: {e}") from None
        return len(data)

    def flush(self) -> None:
        """Nothing: what is buffered goes at 1 MiB or with :meth:`drain`."""

    async def drain(self) -> None:
        """On the loop, after the writer thread is done: send what is buffered."""
        chunk, self._buffer = bytes(self._buffer), bytearray()
        if chunk:
            await self._writer.write(chunk)

    async def close(self) -> None:
        await self._writer.close()


def _remove_spools(folder: Path) -> None:
    """Archives a previous daemon was receiving when it stopped: nobody will import them."""
    if folder.is_dir():
        for leftover in folder.glob(f"{SPOOL_PREFIX}*.tar"):
            leftover.unlink(missing_ok=True)


async def _init(ctx: InitContext) -> TransferService:
    await asyncio.to_thread(_remove_spools, ctx.state)
    return TransferService(ctx.get(TRANSFER, "local"), ctx.get(STREAMING, "manager"), ctx.state)


PLUGIN = Registration(GRPC, "transfer", _init, requires=(TRANSFER, STREAMING))
#: every registration this service needs, for the daemon's built-in list
PLUGINS = (MANAGER_PLUGIN, STREAMING_PLUGIN, PLUGIN)
