"""Unpack an image into a snapshot chain keyed by chain ID (containerd's unpacker).

For the image's manifest (an index picks the best platform match present):

- the config's ``rootfs.diff_ids`` must pair with the manifest's layers;
- chain IDs: ``chain[0] = diff_id[0]``, ``chain[i] = sha256(chain[i-1] + " " + diff_id[i])``;
- for each layer, unless the namespace already has snapshot ``chain[i]``:
  ``prepare("extract-<random> <chain>", parent=chain[i-1], labels={containerd.io/snapshot.ref: chain})``
  (AlreadyExists there means the chain is shared from another namespace: skip),
  apply the layer through the diff service verifying its diff ID, then
  ``commit(chain, key)``; a failure removes the active snapshot;
- labels: ``containerd.io/uncompressed=<diff id>`` on each layer blob and
  ``containerd.io/gc.ref.snapshot.<snapshotter>=<top chain id>`` on the config,
  so GC keeps the chain as long as the image.

Pipelining: ``ready(digest)`` (optional) is awaited before a layer is
applied, so a pull can start unpacking layer 1 while later layers are still
downloading; decompression and extraction run in worker threads (isal and
zstandard release the GIL).

Parallel layers: on a snapshotter whose snapshots hold only their own changes
(``layers_independent``: overlayfs), every missing layer is extracted at the
same time (up to one per CPU) into a parentless active snapshot, with overlay
whiteouts, and the snapshots are committed in order, each onto the one below
(``commit(parent=)``). Other snapshotters (native, btrfs: a snapshot contains
its parent's files) unpack one layer after another.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..errors import AlreadyExists, InvalidArgument, NotFound
from ..metadata.content import Info
from ..metadata.plugin import Metadata
from ..metadata.snapshots import SNAPSHOT_REF
from ..remotes import limits as rlimits
from ..remotes import mediatypes as mt
from ..remotes import platforms
from ..remotes.descriptor import Descriptor

UNCOMPRESSED = "containerd.io/uncompressed"
GC_SNAPSHOT = "containerd.io/gc.ref.snapshot."


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain ID of every prefix of ``diff_ids`` (OCI image-spec config.md)."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


async def manifest_for(metadata: Metadata, namespace: str, target: Descriptor,
                       matcher: platforms.MatchComparer | None = None) -> Descriptor:
    """The manifest of ``target`` for the platform (an index: best match present)."""
    matcher = matcher or platforms.default_matcher()
    desc = target
    for _ in range(rlimits.DEFAULT_MAX_DEPTH):
        if mt.is_manifest(desc.media_type):
            return desc
        if not mt.is_index(desc.media_type):
            raise InvalidArgument(f"{desc.digest}: {desc.media_type} is not an image")
        kids = rlimits.children(desc, await metadata.content.read_all(namespace, desc.digest))
        best = matcher.select([k for k in kids if metadata.content.has(namespace, k.digest)], limit=1)
        if not best:
            raise NotFound(f"no manifest of {target.digest} for platform "
                           f"{platforms.default_string()} in the content store")
        desc = best[0]
    raise InvalidArgument(f"{target.digest}: indexes nested too deep")


async def unpack(target: Descriptor, *, metadata: Metadata, diff: object, snapshotter: str,
                 namespace: str, lease: str | None = None,
                 matcher: platforms.MatchComparer | None = None,
                 ready: Callable[[str], Awaitable[None]] | None = None) -> str:
    """Unpack ``target`` into ``snapshotter`` (see the module doc); returns the top chain ID.

    ``diff`` is the diff service (``apply(namespace, desc, mounts, expected_diff_id=)``).
    Raises NotFound (snapshotter or content missing), InvalidArgument (config and
    manifest disagree), FailedPrecondition (a layer's diff ID is wrong).
    """
    try:
        sn = metadata.snapshotters[snapshotter]
    except KeyError:
        raise NotFound(f"snapshotter {snapshotter!r} not loaded") from None
    manifest = await manifest_for(metadata, namespace, target, matcher)
    kids = rlimits.children(manifest, await metadata.content.read_all(namespace, manifest.digest))
    config_desc, layers = kids[0], kids[1:]
    if ready is not None:
        await ready(config_desc.digest)
    try:
        config = json.loads(await metadata.content.read_all(namespace, config_desc.digest))
        rootfs = config.get("rootfs") or {}
        diff_ids = [str(d) for d in (rootfs.get("diff_ids") or [])]
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError) as e:
        raise InvalidArgument(f"image config {config_desc.digest} is not a valid image config: "
                              f"{e}") from None
    if len(diff_ids) != len(layers):
        raise InvalidArgument(f"image {target.digest}: config lists {len(diff_ids)} diff IDs for "
                              f"{len(layers)} layers")
    chains = chain_ids(diff_ids)
    if sn.backend.layers_independent and len(layers) > 1:
        await _unpack_parallel(sn, metadata, namespace, layers, diff_ids, chains, diff, lease, ready)
        await _label_config(metadata, namespace, config_desc, snapshotter, chains[-1])
        return chains[-1]
    parent = ""
    for layer, diff_id, chain in zip(layers, diff_ids, chains, strict=True):
        try:
            sn.stat(namespace, chain)
            parent = chain
            continue
        except NotFound:
            pass
        if ready is not None:
            await ready(layer.digest)
        key = f"extract-{uuid.uuid4().hex[:12]} {chain}"
        try:
            mounts = await sn.prepare(namespace, key, parent, {SNAPSHOT_REF: chain}, lease)
        except AlreadyExists:
            parent = chain  # shared from another namespace (or raced): it is there now
            continue
        try:
            await diff.apply(namespace, layer, mounts, expected_diff_id=diff_id)  # type: ignore[attr-defined]
            await sn.commit(namespace, chain, key, lease=lease)
        except AlreadyExists:
            await sn.remove(namespace, key)
        except BaseException:
            try:
                await sn.remove(namespace, key)
            except NotFound:
                pass
            raise
        await _label_layer(metadata, namespace, layer, diff_id)
        parent = chain
    top = chains[-1] if chains else ""
    if top:
        await _label_config(metadata, namespace, config_desc, snapshotter, top)
    return top


async def _label_layer(metadata: Metadata, namespace: str, layer: Descriptor, diff_id: str) -> None:
    info = metadata.content.info(namespace, layer.digest)
    if info.labels.get(UNCOMPRESSED) != diff_id:
        await metadata.content.update(namespace, Info(layer.digest, layer.size,
                                                      labels={UNCOMPRESSED: diff_id}),
                                      [f"labels.{UNCOMPRESSED}"])


async def _label_config(metadata: Metadata, namespace: str, config: Descriptor, snapshotter: str,
                        top: str) -> None:
    label = GC_SNAPSHOT + snapshotter
    await metadata.content.update(namespace, Info(config.digest, config.size, labels={label: top}),
                                  [f"labels.{label}"])


async def _unpack_parallel(sn: Any, metadata: Metadata, namespace: str, layers: list[Descriptor],
                           diff_ids: list[str], chains: list[str], diff: Any, lease: str | None,
                           ready: Callable[[str], Awaitable[None]] | None) -> None:
    """Extract the missing layers at once into parentless snapshots; commit them in order."""
    parent, start = "", 0
    for i, chain in enumerate(chains):  # the chain's existing prefix is kept as it is
        try:
            sn.stat(namespace, chain)
        except NotFound:
            break
        parent, start = chain, i + 1
    todo = range(start, len(layers))
    if not todo:
        return
    slots = asyncio.Semaphore(max(2, os.cpu_count() or 2))
    keys: dict[int, str] = {}

    async def extract(i: int) -> None:
        if ready is not None:
            await ready(layers[i].digest)
        async with slots:
            key = f"extract-{uuid.uuid4().hex[:12]} {chains[i]}"
            mounts = await sn.prepare(namespace, key, "", None, lease)
            keys[i] = key
            await diff.apply(namespace, layers[i], mounts, expected_diff_id=diff_ids[i],
                             overlay_upper=True)

    tasks = {i: asyncio.ensure_future(extract(i)) for i in todo}
    committed: set[int] = set()
    try:
        for i in todo:
            await tasks[i]
            try:
                await sn.commit(namespace, chains[i], keys[i], lease=lease, parent=parent)
            except AlreadyExists:  # another pull committed this chain meanwhile
                await sn.remove(namespace, keys[i])
            committed.add(i)
            await _label_layer(metadata, namespace, layers[i], diff_ids[i])
            parent = chains[i]
    except BaseException:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for i, key in keys.items():
            if i not in committed:
                try:
                    await sn.remove(namespace, key)
                except NotFound:
                    pass
        raise
