"""``client.images``: image records, and pull/push/import/export done by the daemon.

As containerd 2.x's client does it: pull, push, import and export are one
``Transfer`` call each, naming a source and a destination; what must flow
during the call goes over named streams the client opens first with
``Streaming/Stream`` (``core/streaming/proxy``, ``core/transfer/proxy``):

- progress: the daemon sends ``Progress`` events, handed to ``progress=`` as
  :class:`Progress` values;
- credentials: the daemon asks ``AuthRequest{host}``, the client answers
  from ``credentials=`` (a ``(user, secret)`` pair for every host, a mapping
  ``host -> (user, secret)``, or a callable ``host -> (user, secret) | None``);
- archive bytes: sent (import) or received (export) as ``Data`` messages
  with ``WindowUpdate`` flow control.

Works against aiocontainerd and containerd 2.x::

    async with Client(address) as client:
        image = await client.images.pull("docker.io/library/busybox:latest",
                                         progress=lambda p: print(p.event, p.name))
        await client.images.export_archive("busybox.tar", [image.name])

Records (``list``, ``get``, ``delete``, ``tag``) use the Images service.
Errors are :mod:`aiocontainerd.errors` classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import betterproto2
import grpclib.const
from grpclib.client import Channel
from grpclib.client import Stream as GrpcStream
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ..api.containerd import types as ctypes
from ..api.containerd.services.content import v1 as content_api
from ..api.containerd.services.images import v1 as images_api
from ..api.containerd.services.streaming import v1 as streaming_api
from ..api.containerd.services.transfer import v1 as transfer_api
from ..api.containerd.types import transfer as tt
from ..api.google import protobuf as pb
from ..errors import AlreadyExists, ContainerdError, InvalidArgument, NotFound, Unavailable, from_status
from ..metadata.images import Image
from ..services.convert import from_timestamp
from ..services.streaming import (
    STREAM_METHOD,
    generate_id,
    is_type,
    pack,
    receive_stream,
    send_stream,
    unpack,
)
from ..types import Descriptor

log = logging.getLogger(__name__)
T = TypeVar("T")

Credentials = tuple[str, str]
CredentialsSource = (Credentials | Mapping[str, Credentials]
                     | Callable[[str], Credentials | Awaitable[Credentials | None] | None])
FILE_CHUNK = 1 << 20
#: after Transfer returns, how long to wait for the last progress events and stream ends
DRAIN_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class Progress:
    """One progress event of a transfer (containerd's ``transfer.Progress``).

    ``name`` is empty for a status line (``event`` like ``Pulling from …``);
    otherwise the object: the image name, or a blob's ingest ref
    (``layer-sha256:…``) with ``parents`` the refs above it. ``event`` is then
    ``waiting``, ``downloading``/``uploading`` (``progress`` of ``total``
    bytes), ``complete``, ``already exists``, ``saved`` …
    """

    event: str
    name: str = ""
    parents: tuple[str, ...] = ()
    progress: int = 0
    total: int = 0
    desc: Descriptor | None = None


def _error(e: GRPCError) -> ContainerdError:
    return from_status(e.status, e.message or e.status.name)


async def _call(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except GRPCError as e:
        raise _error(e) from None


def _descriptor(d: ctypes.Descriptor | None) -> Descriptor | None:
    if d is None:
        return None
    return Descriptor(d.media_type, d.digest, d.size, dict(d.annotations))


def _image(i: images_api.Image) -> Image:
    target = _descriptor(i.target) or Descriptor("", "", 0)
    return Image(i.name, target, dict(i.labels), from_timestamp(i.created_at), from_timestamp(i.updated_at))


def _platforms(specs: Iterable[str]) -> list[ctypes.Platform]:
    from ..remotes import platforms

    out = []
    for p in platforms.parse_all(list(specs)):
        out.append(ctypes.Platform(os=p.os, architecture=p.architecture, variant=p.variant,
                                   os_version=p.os_version, os_features=list(p.os_features)))
    return out


def _default_platform() -> str:
    from ..remotes import platforms

    return platforms.default_string()


# -- the client's end of a named stream --------------------------------------------------------

class ClientStream:
    """A ``Streaming/Stream`` call registered under an id (containerd's ``streamCreator``).

    :meth:`send`/:meth:`recv` carry ``Any`` messages; :meth:`close` ends the
    client's side (the daemon sees EOF); :meth:`finish` waits for the daemon to
    end the call, or cancels it.
    """

    def __init__(self, grpc_stream: GrpcStream[pb.Any, pb.Any], id_: str) -> None:
        self.id = id_
        self._grpc = grpc_stream
        self._send_lock = asyncio.Lock()
        self._ended = False
        self._done = False

    @classmethod
    async def create(cls, channel: Channel, metadata: Mapping[str, str], id_: str) -> ClientStream:
        """Open the call, send ``StreamInit{id}`` and wait for the daemon's ack."""
        grpc_stream = channel.request(STREAM_METHOD, grpclib.const.Cardinality.STREAM_STREAM,
                                      pb.Any, pb.Any, metadata=dict(metadata))
        await grpc_stream.__aenter__()
        stream = cls(grpc_stream, id_)
        try:
            await grpc_stream.send_message(pack(streaming_api.StreamInit(id=id_)))
            ack = await grpc_stream.recv_message()
            if ack is None:
                await grpc_stream.end()
                await grpc_stream.recv_trailing_metadata()
                raise Unavailable(f"stream {id_}: the server ended the call without an ack")
        except GRPCError as e:
            await stream.finish()
            raise _error(e) from None
        except (StreamTerminatedError, ConnectionError) as e:
            error = stream._status_error() or Unavailable(f"stream {id_}: {e}")
            await stream.finish()
            raise error from None
        except BaseException:
            await stream.finish()
            raise
        return stream

    def _status_error(self) -> ContainerdError | None:
        """The error status the server sent before resetting the stream, if it sent one.

        A server that fails a call before reading all of the client's messages
        sends its status and then resets the stream; grpclib then reports the
        reset, so the status is read from the headers it received.
        """
        try:
            self._grpc._maybe_raise()
        except GRPCError as e:
            return _error(e)
        except Exception:
            return None
        return None

    async def send(self, message: betterproto2.Message | pb.Any) -> None:
        if self._ended or self._done:
            raise Unavailable(f"stream {self.id} is closed")
        value = message if isinstance(message, pb.Any) else pack(message)
        async with self._send_lock:
            try:
                await self._grpc.send_message(value)
            except (GRPCError, StreamTerminatedError, ConnectionError) as e:
                raise Unavailable(f"stream {self.id}: send failed: {e}") from None

    async def recv(self) -> pb.Any | None:
        if self._done:
            return None
        try:
            message = await self._grpc.recv_message()
            if message is None:
                await self.close()  # trailers are read once both sides have ended
                self._done = True
                await self._grpc.recv_trailing_metadata()
            return message
        except GRPCError as e:
            self._done = True
            raise _error(e) from None
        except (StreamTerminatedError, ConnectionError) as e:
            self._done = True
            raise self._status_error() or Unavailable(f"stream {self.id}: {e}") from None

    async def close(self) -> None:
        """End the client's side (``CloseSend``)."""
        if self._ended or self._done:
            return
        self._ended = True
        async with self._send_lock:
            with contextlib.suppress(GRPCError, StreamTerminatedError, ConnectionError):
                await self._grpc.end()

    async def finish(self) -> None:
        """Release the call: cancelled unless the daemon has ended it."""
        if not self._done:
            self._done = True
            with contextlib.suppress(Exception):
                await self._grpc.cancel()
        with contextlib.suppress(Exception):
            await self._grpc.__aexit__(None, None, None)


# -- one Transfer call and its streams ------------------------------------------------------

class _Session:
    """The streams and tasks of one Transfer call, cleaned up when it ends."""

    def __init__(self, images: Images) -> None:
        self._images = images
        self._streams: list[ClientStream] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._must_finish: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> _Session:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        for task in self._tasks:
            if not task.done():
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for stream in self._streams:
            await stream.finish()

    async def open(self, prefix: str) -> ClientStream:
        stream = await ClientStream.create(self._images._channel, self._images._metadata,
                                           generate_id(prefix))
        self._streams.append(stream)
        return stream

    def start(self, coro: Awaitable[Any], *, must_finish: bool = False,
              stream: ClientStream | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` for the call's duration; if it fails, ``stream`` is cancelled, so the
        daemon's side of it fails too instead of waiting."""
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        if must_finish:
            self._must_finish.append(task)
        if stream is not None:
            def on_done(t: asyncio.Task[Any]) -> None:
                if not t.cancelled() and t.exception() is not None:
                    self.start(stream.finish())

            task.add_done_callback(on_done)
        return task

    async def progress(self, on_event: Callable[[Progress], None]) -> str:
        """Open a progress stream; its events go to ``on_event``."""
        stream = await self.open("progress")

        async def read() -> None:
            while (message := await stream.recv()) is not None:
                if not is_type(message, tt.Progress):
                    log.warning("unhandled progress object", extra={"fields": {"type": message.type_url}})
                    continue
                p = unpack(message, tt.Progress)
                try:
                    on_event(Progress(p.event, p.name, tuple(p.parents), p.progress, p.total,
                                      _descriptor(p.desc)))
                except Exception:
                    log.exception("progress callback failed")

        self.start(read(), must_finish=True)
        return stream.id

    async def auth(self, credentials: CredentialsSource) -> str:
        """Open an auth stream answering the daemon's credentials requests."""
        stream = await self.open("creds")

        async def lookup(host: str) -> Credentials | None:
            if isinstance(credentials, tuple):
                return credentials
            if isinstance(credentials, Mapping):
                return credentials.get(host)
            found = credentials(host)
            if inspect.isawaitable(found):
                found = await found
            return found  # type: ignore[return-value]

        async def answer() -> None:
            while (message := await stream.recv()) is not None:
                request = unpack(message, tt.AuthRequest)
                try:
                    found = await lookup(request.host)
                except Exception:
                    log.exception("credentials lookup failed", extra={"fields": {"host": request.host}})
                    found = None
                if not found or not (found[0] or found[1]):
                    response = tt.AuthResponse(auth_type=tt.AuthType.NONE)
                elif found[0]:
                    response = tt.AuthResponse(auth_type=tt.AuthType.CREDENTIALS,
                                               username=found[0], secret=found[1])
                else:
                    response = tt.AuthResponse(auth_type=tt.AuthType.REFRESH, secret=found[1])
                await stream.send(response)

        self.start(answer())
        return stream.id

    async def transfer(self, source: betterproto2.Message, destination: betterproto2.Message,
                       progress_stream: str = "") -> None:
        request = transfer_api.TransferRequest(
            source=pack(source), destination=pack(destination),
            options=transfer_api.TransferOptions(progress_stream=progress_stream))
        await _call(self._images._transfer.transfer(request))
        if self._must_finish:
            done, _ = await asyncio.wait(self._must_finish, timeout=DRAIN_TIMEOUT)
            for task in done:
                _raise_failure(task)


def _raise_failure(task: asyncio.Task[Any]) -> None:
    """Raise what a finished helper task raised (a cancelled one raised nothing)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error


def _registry(ref: str, plain_http: bool, auth_stream: str) -> tt.OciRegistry:
    return tt.OciRegistry(reference=ref, resolver=tt.RegistryResolver(
        auth_stream=auth_stream, default_scheme="http" if plain_http else ""))


# -- the namespace-bound images client ---------------------------------------------------------

class Images:
    """Images of the client's namespace (see the module doc)."""

    def __init__(self, channel: Channel, metadata: Mapping[str, str],
                 timeout: float | None = None) -> None:
        self._channel = channel
        self._metadata = dict(metadata)
        args: dict[str, Any] = {"timeout": timeout, "metadata": self._metadata}
        self._images = images_api.ImagesStub(channel, **args)
        self._content = content_api.ContentStub(channel, **args)
        self._transfer = transfer_api.TransferStub(channel, metadata=self._metadata)

    # -- records ---------------------------------------------------------------------------

    async def list(self, filters: Iterable[str] = ()) -> list[Image]:
        """Images matching any of ``filters`` (containerd syntax, e.g. ``name~=busybox``)."""
        r = await _call(self._images.list(images_api.ListImagesRequest(filters=list(filters))))
        return [_image(i) for i in r.images]

    async def get(self, name: str) -> Image:
        """Raises NotFound."""
        r = await _call(self._images.get(images_api.GetImageRequest(name=name)))
        return _image(r.image)

    async def delete(self, name: str, *, sync: bool = False) -> None:
        """Delete the image ``name``; ``sync``: collect its content before returning."""
        await _call(self._images.delete(images_api.DeleteImageRequest(name=name, sync=sync)))

    async def tag(self, source: str, target: str, *, force: bool = False) -> Image:
        """Name ``source``'s target ``target`` too. AlreadyExists unless ``force``."""
        image = await self.get(source)
        t = image.target
        wire = images_api.Image(name=target, labels=dict(image.labels), target=ctypes.Descriptor(
            media_type=t.media_type, digest=t.digest, size=t.size, annotations=dict(t.annotations)))
        try:
            r = await _call(self._images.create(images_api.CreateImageRequest(image=wire)))
        except AlreadyExists:
            if not force:
                raise
            r = await _call(self._images.update(images_api.UpdateImageRequest(
                image=wire, update_mask=pb.FieldMask(paths=["target", "labels"]))))
        return _image(r.image)

    # -- transfers -------------------------------------------------------------------------

    async def pull(self, ref: str, *, platforms: Sequence[str] = (), all_platforms: bool = False,
                   plain_http: bool = False, credentials: CredentialsSource | None = None,
                   labels: Mapping[str, str] | None = None,
                   progress: Callable[[Progress], None] | None = None,
                   snapshotter: str = "") -> Image:
        """Pull ``ref`` into the daemon; returns the image.

        ``platforms`` (``linux/arm64`` …) or ``all_platforms``; by default the
        client's platform, as ``ctr images pull`` does. ``plain_http``: talk to
        the registry over HTTP. ``snapshotter`` (e.g. ``overlayfs``): also unpack
        the client's platform there, while the layers download (an ``unpacks``
        entry of the ImageStore destination, as containerd 2.x's client sends).
        """
        from ..errors import InvalidArgument
        from ..remotes import reference

        if platforms and all_platforms:
            raise InvalidArgument("cannot specify both platforms and all_platforms")
        name = str(reference.parse(ref))
        specs = [] if all_platforms else list(platforms) or [_default_platform()]
        saved: list[str] = []

        def on_event(p: Progress) -> None:
            if p.event == "saved" and p.name:
                saved.append(p.name)
            if progress is not None:
                progress(p)

        async with _Session(self) as s:
            auth = await s.auth(credentials) if credentials is not None else ""
            stream = await s.progress(on_event)
            store = tt.ImageStore(name=name, labels=dict(labels or {}), platforms=_platforms(specs))
            if snapshotter:
                # unpack the first requested platform (the client's by default), as ctr 2.x does
                [which] = _platforms([specs[0] if specs else _default_platform()])
                store.unpacks = [tt.UnpackConfiguration(platform=which, snapshotter=snapshotter)]
            await s.transfer(_registry(ref, plain_http, auth), store, stream)
        return await self.get(saved[0] if saved else name)

    async def push(self, name: str, ref: str = "", *, platforms: Sequence[str] = (),
                   plain_http: bool = False, credentials: CredentialsSource | None = None,
                   progress: Callable[[Progress], None] | None = None) -> None:
        """Push the image ``name`` to ``ref`` (default: ``name``)."""
        async with _Session(self) as s:
            auth = await s.auth(credentials) if credentials is not None else ""
            stream = await s.progress(progress) if progress is not None else ""
            store = tt.ImageStore(name=name, platforms=_platforms(platforms))
            await s.transfer(store, _registry(ref or name, plain_http, auth), stream)

    async def import_archive(self, source: str | os.PathLike[str] | IO[bytes], *,
                             base_name: str = "", platforms: Sequence[str] = (),
                             all_platforms: bool = True, labels: Mapping[str, str] | None = None,
                             progress: Callable[[Progress], None] | None = None) -> list[Image]:
        """Import an OCI layout or ``docker save`` tar (a path or a binary file object).

        Tag-only names in the archive are joined to ``base_name``; without one,
        as ``ctr images import``, to ``import-<date>``. Returns the images saved.
        """
        prefix, overwrite = base_name, False
        if not prefix:
            prefix, overwrite = f"import-{datetime.date.today().isoformat()}", True
        saved: list[str] = []

        def on_event(p: Progress) -> None:
            if p.event == "saved" and p.name:
                saved.append(p.name)
            if progress is not None:
                progress(p)

        specs = [] if all_platforms else list(platforms) or [_default_platform()]
        store = tt.ImageStore(labels=dict(labels or {}), platforms=_platforms(specs),
                              extra_references=[tt.ImageReference(
                                  name=prefix, is_prefix=True, allow_overwrite=overwrite)])
        with _opened(source, "rb") as f:
            async with _Session(self) as s:
                progress_id = await s.progress(on_event)
                data = await s.open("import")

                async def read(n: int) -> bytes:
                    return await asyncio.to_thread(f.read, n)

                sender = s.start(send_stream(data, read), stream=data)
                await s.transfer(tt.ImageImportStream(stream=data.id), store, progress_id)
                if sender.done():
                    _raise_failure(sender)
        return [await self.get(n) for n in dict.fromkeys(saved)]

    async def export_archive(self, out: str | os.PathLike[str] | IO[bytes], names: Sequence[str], *,
                             platforms: Sequence[str] = (), all_platforms: bool = False,
                             progress: Callable[[Progress], None] | None = None) -> None:
        """Write an OCI layout tar of the images ``names`` to ``out`` (a path or a binary file).

        Index entries are kept for ``platforms``, all with ``all_platforms``, else
        the client's platform (as ``ctr images export``).
        """
        with _opened(out, "wb") as f:
            async with _Session(self) as s:
                progress_id = await s.progress(progress) if progress is not None else ""
                data = await s.open("export")
                buffered = bytearray()

                async def write(chunk: bytes) -> None:
                    buffered.extend(chunk)
                    if len(buffered) >= FILE_CHUNK:
                        block = bytes(buffered)
                        buffered.clear()
                        await asyncio.to_thread(f.write, block)

                receiver = s.start(receive_stream(data, write), must_finish=True, stream=data)
                store = tt.ImageStore(extra_references=[tt.ImageReference(name=n) for n in names])
                stream = tt.ImageExportStream(stream=data.id, platforms=_platforms(platforms),
                                              all_platforms=all_platforms)
                await s.transfer(store, stream, progress_id)
                await receiver
                if buffered:
                    await asyncio.to_thread(f.write, bytes(buffered))
                await asyncio.to_thread(f.flush)

    # -- content-derived facts, for listings -------------------------------------------------

    async def _read(self, digest: str) -> bytes:
        chunks = []
        try:
            async for r in self._content.read(content_api.ReadContentRequest(digest=digest)):
                chunks.append(r.data)
        except GRPCError as e:
            raise _error(e) from None
        return b"".join(chunks)

    async def _children(self, d: Descriptor) -> list[Any]:
        from ..remotes import limits, mediatypes
        from ..remotes.descriptor import Descriptor as RemoteDescriptor

        if not mediatypes.is_manifest_or_index(d.media_type):
            return []
        return limits.children(RemoteDescriptor(d.media_type, d.digest, d.size), await self._read(d.digest))

    async def platforms(self, image: Image) -> list[str]:
        """The platforms ``image`` has content for (its index's entries, or its config's)."""
        import json

        from ..remotes import mediatypes, platforms

        found: set[str] = set()

        async def visit(d: Any) -> None:
            if mediatypes.is_index(d.media_type):
                for kid in await self._children(d):
                    if kid.platform is not None:
                        found.add(platforms.format(kid.platform))
                    elif mediatypes.is_manifest_or_index(kid.media_type):
                        with contextlib.suppress(ContainerdError):
                            await visit(kid)
            elif mediatypes.is_manifest(d.media_type):
                config = (await self._children(d))[0]
                doc = json.loads(await self._read(config.digest))
                found.add(platforms.format(platforms.Platform.from_json(doc)))

        with contextlib.suppress(ContainerdError, ValueError, IndexError):
            await visit(image.target)
        return sorted(found)

    async def size(self, image: Image, platform: str = "") -> int:
        """Bytes of ``image`` for ``platform`` (default: the client's): the target, the best
        manifest, its config and layers, as ``ctr images ls`` counts them."""
        from ..remotes import mediatypes, platforms

        matcher = platforms.matcher_for([platform] if platform else [])
        total = 0
        d: Any = image.target
        while True:
            total += d.size
            kids = await self._children(d)
            if not mediatypes.is_index(d.media_type):
                return total + sum(k.size for k in kids)
            matching = [k for k in kids if k.platform is not None and matcher.match(k.platform)]
            if matching:
                best = matcher.sort([k.platform for k in matching])[0]
                d = next(k for k in matching if k.platform == best)
            else:
                unnamed = [k for k in kids if k.platform is None]
                if not unnamed:
                    return total
                d = unnamed[0]


@contextlib.contextmanager
def _opened(target: str | os.PathLike[str] | IO[bytes], mode: str) -> Any:
    """A file opened from a path (removed again if writing it fails), or ``target`` itself."""
    if isinstance(target, str | os.PathLike):
        path = Path(target)
        existed = path.exists()
        try:
            with open(path, mode) as f:
                yield f
        except BaseException:
            if "w" in mode and not existed:
                path.unlink(missing_ok=True)  # no half-written archive left behind
            raise
    else:
        yield target


# -- mounting an image's snapshot (actr images mount/unmount) ------------------------------------

async def _read_blob(images: Images, digest: str) -> bytes:
    chunks = []
    async for r in images._content.read(content_api.ReadContentRequest(digest=digest)):
        chunks.append(bytes(r.data))
    return b"".join(chunks)


async def image_chain_id(images: Images, name: str, platform: str = "") -> str:
    """The chain ID of the top layer of image ``name`` for ``platform`` (default: this host's).

    Raises NotFound (image or content), InvalidArgument (not an image).
    """
    return (await image_config(images, name, platform))[2]


async def image_config(images: Images, name: str, platform: str = "") -> tuple[str, dict[str, Any], str]:
    """Image ``name`` for ``platform`` (default: this host's), as containerd's client reads it
    (``image.Config``, ``image.RootFS``): its stored name, its OCI image config (parsed JSON)
    and the chain ID of its top layer.

    Raises NotFound (image, content, or no manifest for the platform), InvalidArgument (not an
    image, or no layers).
    """
    r = await resolve_image(images, name, platform)
    return r.name, r.config, r.chain_ids[-1]


@dataclasses.dataclass(frozen=True)
class ResolvedImage:
    """One platform's manifest of an image: the config blob (descriptor and parsed JSON),
    the layer descriptors in order, their diff IDs and chain IDs (OCI image-spec config.md)."""

    name: str
    config_desc: Descriptor
    config: dict[str, Any]
    layers: list[Descriptor]
    diff_ids: list[str]
    chain_ids: list[str]


async def resolve_image(images: Images, name: str, platform: str = "") -> ResolvedImage:
    """Image ``name``'s manifest for ``platform`` (default: this host's); see :class:`ResolvedImage`.

    Raises NotFound (image, content, or no manifest for the platform), InvalidArgument (not an
    image, no layers, or layers and diff IDs that do not pair up).
    """
    import json

    from ..images.unpack import chain_ids
    from ..remotes import limits, platforms
    from ..remotes import mediatypes as mt
    from ..remotes.descriptor import Descriptor as RDescriptor

    image = await images.get(name)
    t = image.target
    desc = RDescriptor(t.media_type, t.digest, t.size)
    matcher = platforms.matcher_for([platform] if platform else [])
    while mt.is_index(desc.media_type):
        kids = limits.children(desc, await _call(_read_blob(images, desc.digest)))
        best = matcher.select(kids, limit=1)
        if not best:
            raise NotFound(f"image {name} has no manifest for {platform or platforms.default_string()}")
        desc = best[0]
    if not mt.is_manifest(desc.media_type):
        raise InvalidArgument(f"{name}: {desc.media_type} is not an image manifest")
    config_desc, *layers = limits.children(desc, await _call(_read_blob(images, desc.digest)))
    config = json.loads(await _call(_read_blob(images, config_desc.digest)))
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    if not diff_ids:
        raise InvalidArgument(f"{name}: the image has no layers")
    if len(diff_ids) != len(layers):
        raise InvalidArgument(f"{name}: {len(layers)} layers but {len(diff_ids)} diff IDs in its config")
    return ResolvedImage(
        image.name, Descriptor(config_desc.media_type, config_desc.digest, config_desc.size), config,
        [Descriptor(d.media_type, d.digest, d.size, annotations=dict(d.annotations or {})) for d in layers],
        diff_ids, chain_ids(diff_ids))
