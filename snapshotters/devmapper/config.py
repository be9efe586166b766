"""Configuration of the devmapper snapshotter (containerd's ``plugins/snapshots/devmapper/config.go``).

``[plugins."io.containerd.snapshotter.v1.devmapper"]``::

    pool_name = "containerd-pool"     # the thin-pool, as named in /dev/mapper/ (required)
    root_path = ""                    # metadata folder ("": the plugin's own root folder)
    base_image_size = "10GB"          # virtual size of every thin device (required)
    async_remove = false              # remove devices in Cleanup (GC) instead of in Remove
    discard_blocks = false            # blkdiscard a device before removing it
    fs_type = "ext4"                  # ext4, xfs (or ext2, as containerd also accepts)
    fs_options = ""                   # options for mkfs.ext4 -E (ext4/ext2 only)

Two checks, as containerd does them:

- when the file is read, every key that is given is checked on its own
  (:meth:`DevmapperConfig.__post_init__`): a size that does not parse, an
  unknown filesystem type — a ``ValueError`` naming the key;
- when the snapshotter starts, :meth:`DevmapperConfig.validate` checks that the
  required keys are set (the default configuration has no pool: the plugin is
  then skipped with "devmapper not configured", as containerd skips it).

Sizes are read as docker's ``go-units`` ``RAMInBytes`` reads them (and so as
containerd does): a number with an optional ``k``/``m``/``g``/``t``/``p`` prefix,
optional ``i`` and optional ``b``, case-insensitive, always in powers of 1024:
``"128Mb"``, ``"128MiB"`` and ``"128m"`` are all 134217728 bytes.
"""

from __future__ import annotations

import dataclasses
import re

FS_EXT4 = "ext4"
FS_EXT2 = "ext2"
FS_XFS = "xfs"
#: Filesystems containerd's devmapper snapshotter can make on a thin device.
FS_TYPES = (FS_EXT4, FS_XFS, FS_EXT2)

_SIZE = re.compile(r"^(\d+(?:\.\d+)*) ?([kmgtp])?i?b?$", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


class DevmapperConfigError(ValueError):
    """A devmapper configuration that cannot be used; the message names the keys."""


def parse_size(text: str) -> int:
    """Bytes in a human-readable size (``"8192MB"``, ``"10GiB"``, ``"512k"``, ``"4096"``).

    Units are binary (1024), as containerd's ``units.RAMInBytes`` reads them.
    Raises ``ValueError("invalid size: '<text>'")``.
    """
    m = _SIZE.match(text.strip()) if text.count(".") <= 1 else None
    if m is None:
        raise ValueError(f"invalid size: {text!r}")
    number = float(m.group(1))
    return int(number * (1024 ** _UNITS[(m.group(2) or "").lower()]))


@dataclasses.dataclass
class DevmapperConfig:
    """``[plugins."io.containerd.snapshotter.v1.devmapper"]`` (see the module doc)."""

    root_path: str = ""
    pool_name: str = ""
    base_image_size: str = ""
    async_remove: bool = False
    discard_blocks: bool = False
    fs_type: str = FS_EXT4
    fs_options: str = ""

    def __post_init__(self) -> None:
        # Each key that is given must make sense on its own; required keys are
        # checked by validate() when the snapshotter starts.
        if self.base_image_size:
            try:
                parse_size(self.base_image_size)
            except ValueError as e:
                raise DevmapperConfigError(
                    f"key 'base_image_size': failed to parse base image size {self.base_image_size!r}: "
                    f"{e}") from None
        if self.fs_type and self.fs_type not in FS_TYPES:
            raise DevmapperConfigError(f"key 'fs_type': unsupported filesystem type {self.fs_type!r} "
                                       f"(one of {', '.join(FS_TYPES)})")
        if self.pool_name and (any(c.isspace() for c in self.pool_name) or
                               "/" in self.pool_name.removeprefix("/dev/mapper/")):
            raise DevmapperConfigError(f"key 'pool_name': {self.pool_name!r} is not a device-mapper name "
                                       "(no spaces or '/', as in /dev/mapper/<name>)")

    @property
    def base_image_size_bytes(self) -> int:
        """``base_image_size`` in bytes (0 when unset)."""
        return parse_size(self.base_image_size) if self.base_image_size else 0

    @property
    def filesystem(self) -> str:
        """``fs_type``, with containerd's default ``ext4`` when empty."""
        return self.fs_type or FS_EXT4

    def validate(self) -> None:
        """Check the keys the snapshotter needs (containerd's ``Config.Validate``).

        Raises :class:`DevmapperConfigError` listing every problem, each naming
        its key (``pool_name``, ``root_path``, ``base_image_size``, ``fs_type``).
        """
        problems = []
        if not self.pool_name:
            problems.append("key 'pool_name' is required")
        if not self.root_path:
            problems.append("key 'root_path' is required")
        if not self.base_image_size:
            problems.append("key 'base_image_size' is required")
        elif self.base_image_size_bytes <= 0:
            problems.append(f"key 'base_image_size': {self.base_image_size!r} is not a positive size")
        if self.filesystem not in FS_TYPES:
            problems.append(f"key 'fs_type': unsupported filesystem type {self.fs_type!r}")
        if problems:
            raise DevmapperConfigError("devmapper configuration: " + "; ".join(problems))
