"""Snapshotter plugins (``io.containerd.snapshotter.v1.<name>``): overlayfs, native, btrfs, ...

Arrive with the snapshotters issue; the package exists so the import namespace is fixed.
"""
