"""Diffs: applying layers onto mounts and computing layers from two mounts.

containerd's ``core/diff`` (Applier, Comparer) with its ``walking`` differ
and ``pkg/archive``:

- :mod:`.compression` — detect, decompress and compress layer streams
  (gzip through ISA-L, zstd);
- :mod:`.apply` — :func:`~.apply.apply_layer`, the safe, streaming changeset
  extractor (a blocking function for worker threads) and
  :func:`~.apply.apply`, which applies onto a list of mounts;
- :mod:`.compare` — :func:`~.compare.write_diff`, the changes between two
  folders as an OCI layer tar, and :func:`~.compare.compare`, which writes
  that layer for two lists of mounts into the content store;
- :mod:`.service` — :class:`~.service.DiffService`, the core object behind
  the Diff gRPC service and the unpacker (plugin
  ``io.containerd.service.v1.diff-service``).
"""

from __future__ import annotations

from .apply import apply_layer
from .compression import Compression

# ``apply`` (the async applier) stays in :mod:`.apply`: a package attribute of that
# name would hide the submodule.
__all__ = ["Compression", "apply_layer"]
