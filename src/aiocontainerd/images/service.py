"""The image transfer plugin (``io.containerd.transfer.v1.local``): pull, push, import, export.

One object the Transfer service, the CRI plugin and embedders call. It owns
the registry configuration:

- ``config_path``: containerd's ``hosts.toml`` directory (mirrors, TLS,
  plain HTTP, headers per registry host); empty: defaults (HTTPS, except
  plain HTTP allowed for loopback);
- ``docker_config``: a docker ``config.json`` to take credentials from
  (empty: none); credentials given with a request win;
- ``max_concurrent_downloads`` / ``max_concurrent_uploads``: blobs at once.

With an event exchange, every image a pull or an import stores is announced
in its namespace as containerd's images store does: ``/images/create``
(``ImageCreate``: name, labels) for a new image, ``/images/update``
(``ImageUpdate``) for an existing one moved to the new target. (A new image is
recognised by the store's timestamps: create sets ``created_at`` and
``updated_at`` to the same instant, an update moves ``updated_at`` on.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ..errors import FailedPrecondition, InvalidArgument
from ..metadata.images import Image
from ..metadata.plugin import Metadata
from ..plugin import EVENT, METADATA, SERVICE, InitContext, Registration

if TYPE_CHECKING:  # the registry client (aiohttp) is imported on first use, not at daemon start
    from ..events import Exchange
    from ..remotes import Resolver
    from ..remotes.descriptor import Descriptor
    from ..remotes.pusher import PushResult
    from .pull import Progress

TRANSFER = "io.containerd.transfer.v1"


@dataclasses.dataclass
class TransferConfig:
    """``[plugins."io.containerd.transfer.v1.local"]``."""

    config_path: str = ""
    docker_config: str = ""
    max_concurrent_downloads: int = 3
    max_concurrent_uploads: int = 3

    def __post_init__(self) -> None:
        for name in ("max_concurrent_downloads", "max_concurrent_uploads"):
            if getattr(self, name) < 1:
                raise ValueError(f"key {name!r}: must be at least 1")


Credentials = Mapping[str, tuple[str, str]]


class ImageService:
    """Moves images in and out of one daemon's stores (see the module doc)."""

    def __init__(self, metadata: Metadata, config: TransferConfig, diff: object = None,
                 events: Exchange | None = None) -> None:
        self.metadata = metadata
        self.config = config
        #: the diff service, for unpacking; None when it did not load
        self.diff = diff
        #: where image changes are published; None: not published
        self.events = events

    def stored(self, namespace: str, image: Image, created: bool | None = None) -> Image:
        """Publish ``/images/create`` (``created``) or ``/images/update`` for ``image``; return it.

        ``created=None``: tell from the image's timestamps (see the module doc).
        """
        if self.events is not None:
            from ..api.containerd.services.images import v1 as images_api

            if created is None:
                created = image.created_at == image.updated_at
            if created:
                self.events.publish(namespace, "/images/create",
                                    images_api.ImageCreate(name=image.name, labels=dict(image.labels)))
            else:
                self.events.publish(namespace, "/images/update",
                                    images_api.ImageUpdate(name=image.name, labels=dict(image.labels)))
        return image

    def resolver(self, credentials: Credentials | None = None, *, plain_http: bool = False) -> Resolver:
        """A resolver with the configured hosts and credentials (request ones first)."""
        from ..remotes import DockerConfig, Hosts, Resolver

        creds: dict[str, tuple[str, str]] = {}
        if self.config.docker_config:
            docker = DockerConfig.load(self.config.docker_config)
            for host in docker.hosts():
                found = docker(host)
                if found:
                    creds[host] = found
        creds.update(credentials or {})
        return Resolver(Hosts(self.config.config_path or None, plain_http=plain_http), creds)

    async def pull(self, namespace: str, ref: str, *, platform_specs: Sequence[str] = (),
                   all_platforms: bool = False, labels: Mapping[str, str] | None = None,
                   credentials: Credentials | None = None, plain_http: bool = False,
                   progress: Callable[[Progress], None] | None = None,
                   snapshotter: str = "", unpack_platforms: Sequence[str] = ()) -> Image:
        """Pull ``ref``; ``platform_specs`` like ``linux/arm64`` (default: the host's).

        ``snapshotter``: also unpack there, for ``unpack_platforms`` (first one; default:
        the pulled platform, else the host's).
        Raises FailedPrecondition when unpacking is asked but no diff service loaded.
        """
        from ..remotes import platforms
        from .pull import PullOptions, pull

        matcher = platforms.matcher_for(list(platform_specs)) if platform_specs else None
        if snapshotter and self.diff is None:
            raise FailedPrecondition("cannot unpack: the diff service is not loaded")
        unpack_matcher = platforms.matcher_for(list(unpack_platforms)[:1]) if unpack_platforms \
            else matcher
        options = PullOptions(platform=matcher, all_platforms=all_platforms, labels=dict(labels or {}),
                              max_concurrent=self.config.max_concurrent_downloads,
                              snapshotter=snapshotter, unpack_platform=unpack_matcher)
        async with self.resolver(credentials, plain_http=plain_http) as resolver:
            image = await pull(ref, resolver=resolver, metadata=self.metadata, namespace=namespace,
                               options=options, progress=progress, diff=self.diff)
        return self.stored(namespace, image)

    async def push(self, namespace: str, name: str, ref: str = "", *,
                   platform_specs: Sequence[str] = (), credentials: Credentials | None = None,
                   plain_http: bool = False,
                   progress: Callable[[Descriptor, PushResult], None] | None = None) -> list[PushResult]:
        """Push image ``name`` to ``ref`` (default: its own name)."""
        from ..remotes import platforms
        from ..remotes.descriptor import Descriptor
        from .push import PushOptions, push

        image = self.metadata.images.get(namespace, name)
        t = image.target
        target = Descriptor(t.media_type, t.digest, t.size)
        matcher = platforms.matcher_for(list(platform_specs)) if platform_specs else None
        async with self.resolver(credentials, plain_http=plain_http) as resolver:
            return await push(ref or name, target, resolver=resolver, metadata=self.metadata,
                              namespace=namespace,
                              options=PushOptions(matcher, self.config.max_concurrent_uploads),
                              progress=progress)

    async def import_archive(self, namespace: str, path: str | Path, *,
                             base_name: str = "") -> list[Image]:
        from . import archive

        images = await archive.import_archive(path, metadata=self.metadata, namespace=namespace,
                                              options=archive.ImportOptions(base_name=base_name))
        return [self.stored(namespace, i) for i in images]

    async def export_archive(self, namespace: str, out: IO[bytes], names: Sequence[str], *,
                             platform_specs: Sequence[str] = ()) -> None:
        from ..remotes import platforms
        from . import archive

        if not names:
            raise InvalidArgument("name at least one image to export")
        targets = [(n, self.metadata.images.get(namespace, n).target) for n in names]
        matcher = platforms.matcher_for(list(platform_specs)) if platform_specs else None
        await archive.export_archive(out, targets, content=self.metadata.content, namespace=namespace,
                                     platform=matcher)


async def _init(ctx: InitContext) -> ImageService:
    diff = ctx.get_all(SERVICE).get("diff-service")
    return ImageService(ctx.get(METADATA), ctx.config, diff, ctx.get(EVENT))


PLUGIN = Registration(TRANSFER, "local", _init, requires=(METADATA, SERVICE, EVENT),
                      config=TransferConfig)
