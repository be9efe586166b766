"""Unpack an image into a snapshotter from the client, as containerd's client does
(``image.Unpack``; ``ctr run`` calls it when the image is not unpacked in the chosen
snapshotter): through the Snapshots, Diff and Content services of the daemon.

For each layer, in order: the chain ID's snapshot exists already → skip; else Prepare
``extract-<random> <chain ID>`` on the previous chain ID, Diff.Apply the layer blob onto
its mounts, check the applied digest is the config's diff ID, Commit it as the chain ID
(a concurrent unpack committing it first is fine), or Remove the key on any failure.
Then the layers' blobs get ``containerd.io/uncompressed=<diff ID>`` and the config blob
``containerd.io/gc.ref.snapshot.<snapshotter>=<top chain ID>``, so the chain outlives the
caller's lease and is collected with the image. Everything runs under the caller's lease.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Mapping

from grpclib.client import Channel

from ..api.containerd import types as ctypes
from ..api.containerd.services.content import v1 as content_api
from ..api.containerd.services.diff.v1 import ApplyRequest, DiffStub
from ..api.containerd.services.snapshots import v1 as snapshots_api
from ..api.google import protobuf as pb
from ..errors import AlreadyExists, InvalidArgument, NotFound
from ..images.unpack import GC_SNAPSHOT, UNCOMPRESSED
from ..services.context import LEASE_HEADER
from ..types import Descriptor
from .images import ResolvedImage, _call


async def unpack(channel: Channel, metadata: Mapping[str, str], image: ResolvedImage, snapshotter: str,
                 *, lease: str, call_timeout: float | None = None) -> str:
    """Unpack ``image`` into ``snapshotter`` (see the module doc); its top chain ID.

    ``metadata``: the client's request metadata (namespace); ``call_timeout``: seconds per
    call (None: none). Raises NotFound (a layer
    blob), InvalidArgument (a layer whose content is not its diff ID), and the daemon's
    errors; a failed layer leaves no snapshot of its own behind.
    """
    md = {**metadata, LEASE_HEADER: lease}
    snapshots = snapshots_api.SnapshotsStub(channel, timeout=call_timeout, metadata=md)
    diff = DiffStub(channel, timeout=call_timeout, metadata=md)
    parent = ""
    for layer, diff_id, chain in zip(image.layers, image.diff_ids, image.chain_ids, strict=True):
        try:
            await _call(snapshots.stat(snapshots_api.StatSnapshotRequest(snapshotter=snapshotter, key=chain)))
        except NotFound:
            await _apply(snapshots, diff, snapshotter, layer, diff_id, chain, parent)
        parent = chain
    content = content_api.ContentStub(channel, timeout=call_timeout, metadata=md)
    for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
        await _label(content, layer.digest, UNCOMPRESSED, diff_id)
    await _label(content, image.config_desc.digest, GC_SNAPSHOT + snapshotter, image.chain_ids[-1])
    return image.chain_ids[-1]


async def _apply(snapshots: snapshots_api.SnapshotsStub, diff: DiffStub, snapshotter: str, layer: Descriptor,
                 diff_id: str, chain: str, parent: str) -> None:
    key = f"extract-{secrets.token_hex(6)} {chain}"
    r = await _call(snapshots.prepare(snapshots_api.PrepareSnapshotRequest(
        snapshotter=snapshotter, key=key, parent=parent)))
    try:
        applied = await _call(diff.apply(ApplyRequest(
            diff=ctypes.Descriptor(media_type=layer.media_type, digest=layer.digest, size=layer.size,
                                   annotations=dict(layer.annotations)),
            mounts=list(r.mounts))))
        got = applied.applied.digest if applied.applied is not None else ""
        if got != diff_id:
            raise InvalidArgument(f"layer {layer.digest}: content is {got}, the image config says {diff_id}")
        try:
            await _call(snapshots.commit(snapshots_api.CommitSnapshotRequest(
                snapshotter=snapshotter, name=chain, key=key)))
        except AlreadyExists:
            # another unpack committed this chain ID meanwhile: theirs is the same layer
            with contextlib.suppress(Exception):
                await _remove(snapshots, snapshotter, key)
            return
    except BaseException:
        with contextlib.suppress(Exception):   # the original failure is what the caller needs
            await _remove(snapshots, snapshotter, key)
        raise


async def _remove(snapshots: snapshots_api.SnapshotsStub, snapshotter: str, key: str) -> None:
    await _call(snapshots.remove(snapshots_api.RemoveSnapshotRequest(snapshotter=snapshotter, key=key)))


async def _label(content: content_api.ContentStub, digest: str, key: str, value: str) -> None:
    await _call(content.update(content_api.UpdateRequest(
        info=content_api.Info(digest=digest, labels={key: value}),
        update_mask=pb.FieldMask(paths=[f"labels.{key}"]))))
