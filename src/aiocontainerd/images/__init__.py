"""Images: manifests and indexes as trees of content, and what moves them in and out.

- :mod:`.manifest` — parse a manifest or index body into its children, the
  GC labels containerd puts on it, and the limits that keep a malicious one
  from exhausting the daemon.
- :mod:`.archive` — import and export OCI image-layout and ``docker save`` tars.
"""
