"""Reading files of a container's root filesystem without running anything in it.

The user options of :mod:`aiocontainerd.oci` resolve names (``USER app``) and
supplementary groups from the image's ``/etc/passwd`` and ``/etc/group``, as
containerd's ``WithUser``/``WithAdditionalGIDs`` do. containerd mounts the
container's snapshot read-only to read them (or, in 2.x, reads overlay and
bind mounts directly, its ``fsview``); here:

- :class:`DirRootFS` reads a folder (an unmanaged rootfs path, or a
  snapshot mounted on a temporary folder);
- :class:`LayeredRootFS` reads an overlay stack directly: the first layer
  (upper, then each lower, top to bottom) holding the path wins; an overlay
  whiteout (a 0/0 character device) hides it, an opaque folder
  (``trusted.overlay.opaque=y``) hides what lies beneath it;
- :func:`from_mounts` picks one of them for a snapshot's mounts (overlay,
  bind), or returns None when the mounts have to be mounted to be read.

Paths are looked up inside the root: absolute symlinks are taken relative to
it and ``..`` never leaves it (as Go's ``os.OpenRoot`` confines the lookup).
All methods block (file reads): call them from a thread.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import Protocol

from ..mount import Mount

#: symlinks followed in one lookup before giving up (Linux's MAXSYMLINKS)
MAX_SYMLINKS = 40
#: largest /etc/passwd or /etc/group read (containerd bounds user files too)
MAX_USER_FILE = 32 << 20


class RootFS(Protocol):
    """A read-only view of a root filesystem."""

    def read(self, path: str) -> bytes | None:
        """The content of the regular file at ``path`` (absolute inside the root), or None
        when it does not exist. Raises OSError for other failures."""
        ...


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


class _Resolver:
    """Component-wise lookup with symlinks resolved inside the root."""

    def lstat(self, rel: Sequence[str]) -> tuple[os.stat_result, str] | None:  # pragma: no cover
        raise NotImplementedError

    def _resolve(self, path: str) -> str | None:
        """The host path of ``path``'s final file, following symlinks in the root."""
        todo = _parts(path)
        done: list[str] = []
        links = 0
        while todo:
            name = todo.pop(0)
            if name == "..":
                if done:
                    done.pop()
                continue
            found = self.lstat([*done, name])
            if found is None:
                return None
            st, host = found
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(40, "too many levels of symbolic links", path)
                target = os.readlink(host)
                if target.startswith("/"):
                    done = []
                todo = _parts(target) + todo
                continue
            done.append(name)
            if todo and not stat.S_ISDIR(st.st_mode):
                return None
        found = self.lstat(done)
        return None if found is None else found[1]

    def read(self, path: str) -> bytes | None:
        host = self._resolve(path)
        if host is None or not os.path.isfile(host):
            return None
        with open(host, "rb") as f:
            return f.read(MAX_USER_FILE)


class DirRootFS(_Resolver):
    """A root filesystem that is a folder on this host."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)

    def lstat(self, rel: Sequence[str]) -> tuple[os.stat_result, str] | None:
        host = os.path.join(self.root, *rel)
        try:
            return os.lstat(host), host
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


class LayeredRootFS(_Resolver):
    """An overlay stack read directly: ``layers`` top (upper) first."""

    def __init__(self, layers: Sequence[str]) -> None:
        self.layers = [os.fspath(x) for x in layers]

    def lstat(self, rel: Sequence[str]) -> tuple[os.stat_result, str] | None:
        for layer in self.layers:
            hidden = False
            for depth in range(1, len(rel)):  # a whited-out or opaque ancestor in this layer
                anc = os.path.join(layer, *rel[:depth])
                try:
                    ast = os.lstat(anc)
                except (FileNotFoundError, NotADirectoryError):
                    break
                if _is_whiteout(ast) or not stat.S_ISDIR(ast.st_mode):
                    return None
                if _is_opaque(anc):
                    hidden = True
            host = os.path.join(layer, *rel)
            try:
                st = os.lstat(host)
            except (FileNotFoundError, NotADirectoryError):
                if hidden:
                    return None
                continue
            if _is_whiteout(st):
                return None
            return st, host
        return None


def _option(options: Sequence[str], key: str) -> str | None:
    for o in options:
        if o.startswith(key + "="):
            return o[len(key) + 1:]
    return None


def from_mounts(mounts: Sequence[Mount]) -> RootFS | None:
    """A reader for a snapshot's mounts without mounting them, or None if that needs a mount.

    One ``overlay`` mount (``upperdir`` then the ``lowerdir`` list) or one
    ``bind``/``rbind`` mount of a folder are read directly.
    """
    if len(mounts) != 1:
        return None
    m = mounts[0]
    options: list[str] = []
    for o in m.options:
        options.extend(o.split(",") if m.type != "overlay" else [o])
    if m.type == "overlay":
        lower = _option(options, "lowerdir")
        if lower is None:
            return None
        upper = _option(options, "upperdir")
        layers = ([upper] if upper else []) + [x for x in lower.split(":") if x]
        return LayeredRootFS(layers)
    if m.type == "bind" or "bind" in options or "rbind" in options:
        return DirRootFS(m.source)
    return None
