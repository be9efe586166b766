"""``windows-layer`` mounts and the rules containerd's windows differ reads them by.

The Windows snapshotter (containerd's ``plugins/snapshots/windows``) keeps each
snapshot in ``<root>/snapshots/<id>`` and describes it with one mount::

    Mount(type="windows-layer", source="<root>/snapshots/<id>",
          options=("rw" | "ro", 'parentLayerPaths=["<parent dir>", ...]'))

``parentLayerPaths`` (containerd's ``mount.ParentLayerPathsFlag``) is a JSON
array of the parents' folders, nearest parent first; it is left out for a
snapshot without parents. Views are ``ro``, active snapshots ``rw``.

The windows differ (``plugins/diff/windows``) turns mounts into layer folders:

- :func:`mounts_to_layer_and_parents`: exactly one mount (else InvalidArgument);
  a type other than ``windows-layer`` is Unimplemented (the diff service then
  tries the next differ, LCOW); a read-only mount without parents is "no layer"
  (an empty view to diff against); a read-only mount with parents stands for
  its first parent (the view's own folder is a dummy scratch); a writable mount
  is its own folder over its parents;
- :func:`mount_pair_to_layer_stack`: the upper must be a child of the lower —
  ``[upper, *upper's parents]`` where upper's first parent is the lower layer
  and the rest are the lower's parents; a lower of "no layer" only goes with an
  upper without parents. Any other pair is InvalidArgument.

Scratch size labels of active snapshots (:func:`requested_scratch_size`):
``containerd.io/snapshot/windows/rootfs.sizebytes`` (bytes) wins over the
deprecated ``containerd.io/snapshot/io.microsoft.container.storage.rootfs.size-gb``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from aiocontainerd.errors import InvalidArgument, Unimplemented
from aiocontainerd.mount import Mount
from aiocontainerd.snapshots import Kind

MOUNT_TYPE = "windows-layer"
PARENT_LAYER_PATHS = "parentLayerPaths="
#: Label asking for a utility VM scratch space in an active snapshot.
UVM_SCRATCH_LABEL = "containerd.io/snapshot/io.microsoft.vm.storage.scratch"
#: Deprecated: scratch size in GB.
ROOTFS_SIZE_GB_LABEL = "containerd.io/snapshot/io.microsoft.container.storage.rootfs.size-gb"
ROOTFS_SIZE_BYTES_LABEL = "containerd.io/snapshot/windows/rootfs.sizebytes"


def layer_mount(source: str, parent_paths: Sequence[str], kind: Kind) -> Mount:
    """The mount of a snapshot in folder ``source`` with ``parent_paths`` (nearest first)."""
    options = ["ro" if kind == Kind.VIEW else "rw"]
    if parent_paths:
        options.append(PARENT_LAYER_PATHS + json.dumps(list(parent_paths), separators=(",", ":")))
    return Mount(type=MOUNT_TYPE, source=source, options=tuple(options))


def parent_paths(mount: Mount) -> list[str]:
    """The ``parentLayerPaths`` of a mount ([] without the option); InvalidArgument if malformed."""
    for option in mount.options:
        if option.startswith(PARENT_LAYER_PATHS):
            try:
                paths = json.loads(option[len(PARENT_LAYER_PATHS):])
            except ValueError as e:
                raise InvalidArgument(f"invalid {PARENT_LAYER_PATHS} option: {e}") from None
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise InvalidArgument(f"invalid {PARENT_LAYER_PATHS} option: not a list of paths")
            return paths
    return []


def mounts_to_layer_and_parents(mounts: Sequence[Mount]) -> tuple[str, list[str]]:
    """The layer folder a mount list stands for, and its parents (``""`` = no layer)."""
    if len(mounts) != 1:
        raise InvalidArgument("number of mounts should always be 1 for Windows layers")
    mount = mounts[0]
    if mount.type != MOUNT_TYPE:
        raise Unimplemented(f"windowsDiff does not support layer type {mount.type}")
    parents = parent_paths(mount)
    if mount.readonly:
        if not parents:
            return "", []
        return parents[0], parents[1:]
    return mount.source, parents


def mount_pair_to_layer_stack(lower: Sequence[Mount], upper: Sequence[Mount]) -> list[str]:
    """``[upper layer, *its parents]`` for diffing ``upper`` against ``lower`` (see module doc)."""
    try:
        upper_layer, upper_parents = mounts_to_layer_and_parents(upper)
    except (InvalidArgument, Unimplemented) as e:
        raise type(e)(f"upper mount invalid: {e.message}") from None
    try:
        lower_layer, lower_parents = mounts_to_layer_and_parents(lower)
    except Unimplemented:
        raise InvalidArgument("windowsDiff cannot diff a windows-layer against a non-windows-layer") from None
    except InvalidArgument as e:
        raise InvalidArgument(f"lower mount invalid: {e.message}") from None
    if not lower_layer:
        if upper_parents:
            raise InvalidArgument("windowsDiff cannot diff a layer with parents against a null layer")
        return [upper_layer]
    if not upper_parents:
        raise InvalidArgument("windowsDiff cannot diff a layer with no parents against another layer")
    if upper_parents[0] != lower_layer:
        raise InvalidArgument("windowsDiff cannot diff a layer against a layer other than its own parent")
    if upper_parents[1:] != lower_parents:
        raise InvalidArgument("windowsDiff cannot diff a layer against a layer with different parents")
    return [upper_layer, *upper_parents]


def requested_scratch_size(labels: Mapping[str, str]) -> int:
    """Scratch (sandbox.vhdx) size in bytes asked for by labels; 0 for the default.

    Raises InvalidArgument naming the label when its value is not a number.
    """
    size = 0
    if ROOTFS_SIZE_GB_LABEL in labels:
        value = labels[ROOTFS_SIZE_GB_LABEL]
        if not value.isdigit() or int(value) >= 1 << 32:
            raise InvalidArgument(f"failed to parse label {ROOTFS_SIZE_GB_LABEL}={value!r}")
        size = int(value) * 1024 * 1024 * 1024
    if ROOTFS_SIZE_BYTES_LABEL in labels:
        value = labels[ROOTFS_SIZE_BYTES_LABEL]
        if not value.isdigit() or int(value) >= 1 << 64:
            raise InvalidArgument(f"failed to parse label {ROOTFS_SIZE_BYTES_LABEL}={value!r}")
        size = int(value)
    return size
