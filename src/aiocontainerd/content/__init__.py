"""Content: blobs addressed by digest (``io.containerd.content.v1.content``).

Two layers, as in containerd:

- :mod:`.local` — the blobs on disk, shared by every namespace: committed
  blobs under ``blobs/sha256/<hex>``, writes in progress under ``ingest/``.
- :mod:`aiocontainerd.metadata.content` — the namespaced view the services
  use: which namespace holds which blob, with what labels, under which lease.

The terms: a *digest* (``sha256:<64 hex>``) names a blob; a *descriptor* is
media type + digest + size; a *ref* names a write in progress so it can be
resumed; *expected* is the digest a write must produce to be committed.
"""

from .local import BlobInfo, LocalStore, Status, Writer, parse_digest

__all__ = ["BlobInfo", "LocalStore", "Status", "Writer", "parse_digest"]
