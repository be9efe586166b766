"""Push an image from the content store to a registry (daemon side).

Children go before their parents (layers and config, then manifests, then the
index), so the registry can validate each manifest as it arrives; blobs are
pushed ``max_concurrent`` at a time. A blob the repository has is skipped; a
blob whose ``containerd.io/distribution.source.<host>`` label names another
repository on the same registry is mounted from there (cross-repository
mount) when the registry allows it, else uploaded. With a ``platform``
matcher, the best matching manifest of an index is pushed alone and tagged,
as ``ctr images push --platform`` does. Only the root is tagged.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

from ..errors import NotFound
from ..metadata.plugin import Metadata
from ..remotes import limits as rlimits
from ..remotes import mediatypes as mt
from ..remotes import platforms
from ..remotes.descriptor import Descriptor
from ..remotes.pusher import PushResult, select_mount_candidate
from ..remotes.resolver import Resolver

DEFAULT_CONCURRENCY = 3


@dataclasses.dataclass(frozen=True)
class PushOptions:
    platform: platforms.MatchComparer | None = None
    max_concurrent: int = DEFAULT_CONCURRENCY


async def push(ref: str, target: Descriptor, *, resolver: Resolver, metadata: Metadata,
               namespace: str, options: PushOptions = PushOptions(),
               progress: Callable[[Descriptor, PushResult], None] | None = None) -> list[PushResult]:
    """Push the tree under ``target`` to ``ref``; returns what happened to each descriptor.

    Raises NotFound (content missing from the store), and the remotes' errors.
    """
    content = metadata.content
    pusher = resolver.pusher(ref)

    async def read(desc: Descriptor) -> bytes:
        return await content.read_all(namespace, desc.digest)

    if options.platform is not None:
        # as ctr does with --platform: the best matching manifest alone is pushed and tagged
        while mt.is_index(target.media_type):
            kids = rlimits.children(target, await read(target), resolver.limits)
            best = options.platform.select([k for k in kids if content.has(namespace, k.digest)],
                                           limit=1)
            if not best:
                raise NotFound(f"no manifest of {target.digest} matches the platform to push")
            target = best[0]

    async def get_children(desc: Descriptor) -> list[Descriptor]:
        if not mt.is_manifest_or_index(desc.media_type):
            return []
        kids = rlimits.children(desc, await read(desc), resolver.limits)
        if mt.is_index(desc.media_type) and options.platform is not None:
            kids = [k for k in kids if k.platform is None or options.platform.match(k.platform)]
        return [k for k in kids if not mt.is_non_distributable(k.media_type)]

    tree = await rlimits.walk(target, get_children, resolver.limits)
    for desc in tree:
        content.info(namespace, desc.digest)  # NotFound before anything is sent
    blobs = [d for d in tree if not mt.is_manifest_or_index(d.media_type)]
    manifests = [d for d in reversed(tree) if mt.is_manifest_or_index(d.media_type)]
    results: list[PushResult] = []
    sem = asyncio.Semaphore(max(1, options.max_concurrent))

    async def push_blob(desc: Descriptor) -> None:
        async with sem:
            labels = content.info(namespace, desc.digest).labels
            mount = select_mount_candidate(pusher.ref, labels) or None

            def reader(offset: int) -> AsyncIterator[bytes]:
                return content.read(namespace, desc.digest, offset)

            result = await pusher.push(desc, reader, mount_from=mount)
            results.append(result)
            if progress:
                progress(desc, result)

    async with asyncio.TaskGroup() as tg:
        for desc in blobs:
            tg.create_task(push_blob(desc))
    for desc in manifests:
        result = await pusher.push(desc, await read(desc), by_digest=desc is not target)
        results.append(result)
        if progress:
            progress(desc, result)
    return results
