"""Task bundles: the per-task folder a shim runs in, laid out as containerd writes it.

``<state>/io.containerd.runtime.v2.task/<namespace>/<id>/`` (mode 0700; its
parents 0711) holds:

- ``config.json`` — the container's OCI runtime spec (the container record's spec bytes);
- ``rootfs/`` — where the shim mounts the rootfs mounts of CreateTaskRequest;
- ``work`` — a symlink to ``<root>/io.containerd.runtime.v2.task/<namespace>/<id>``,
  the task's persistent working folder (runc's state, checkpoints);
- ``address`` — the shim's ttrpc address (written by the shim or, if not, by us);
- ``shim-binary-path`` — the shim binary that serves it (used after a restart);
- ``log`` — a FIFO the shim writes its log to (the daemon reads it).

Deleting a bundle (containerd's ``Bundle.Delete``) unmounts everything at and
below ``rootfs``, then renames the folder and the work folder to hidden names
(``.<id>``) before removing them, so a half-removed bundle is never loaded.
All methods block (file system and mount syscalls): call them in a thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from aiocontainerd import identifiers
from aiocontainerd.errors import AlreadyExists, InvalidArgument
from aiocontainerd.mount.mounting import unmount_blocking

if TYPE_CHECKING:
    from .binary import StartResult

ADDRESS = "address"
BOOTSTRAP = "bootstrap.json"
SHIM_BINARY_PATH = "shim-binary-path"
CONFIG = "config.json"
LOG = "log"


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A bundle folder ``path`` for task ``id`` of ``namespace``."""

    id: str
    namespace: str
    path: Path

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @classmethod
    def load(cls, state: str | os.PathLike[str], namespace: str, id_: str) -> Bundle:
        """The bundle of an existing task (nothing is read)."""
        return cls(id_, namespace, Path(state) / namespace / id_)

    @classmethod
    def create(cls, state: str | os.PathLike[str], root: str | os.PathLike[str], namespace: str,
               id_: str, spec: bytes | None) -> Bundle:
        """Create the bundle of task ``id_``: folder, ``rootfs/``, work folder and link,
        ``config.json`` (when ``spec`` is given).

        ``state``/``root`` are the plugin's folders (``.../io.containerd.runtime.v2.task``).
        Raises InvalidArgument (bad ID), AlreadyExists (bundle folder present), OSError.
        Nothing is left behind on failure.
        """
        try:
            identifiers.validate(id_)
        except InvalidArgument as e:
            raise InvalidArgument(f"invalid task id {id_}: {e}") from None
        b = cls(id_, namespace, Path(state) / namespace / id_)
        work = Path(root) / namespace / id_
        made: list[Path] = []
        try:
            b.path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
            try:
                b.path.mkdir(mode=0o700)
            except FileExistsError:
                raise AlreadyExists(f"bundle {b.path}: already exists") from None
            made.append(b.path)
            _prepare_permissions(b.path, spec)
            work.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
            b.rootfs.mkdir(mode=0o711)
            if work.exists() or work.is_symlink():
                shutil.rmtree(work, ignore_errors=True)
            work.mkdir(mode=0o711)
            made.append(work)
            os.symlink(work, b.path / "work")
            if spec is not None:
                (b.path / CONFIG).write_bytes(spec)
        except BaseException:
            for p in reversed(made):
                shutil.rmtree(p, ignore_errors=True)
            raise
        return b

    # -- the files shims and restarts use ------------------------------------------------

    def write_address(self, address: str) -> None:
        """Write ``address`` unless the shim already wrote one."""
        target = self.path / ADDRESS
        if not target.exists():
            _atomic_write(target, address.encode())

    def read_address(self) -> str:
        """The shim's address: ``bootstrap.json`` (2.x form) if present, else ``address``.
        Raises OSError (FileNotFoundError) when neither exists."""
        from .binary import parse_start_response

        boot = self.path / BOOTSTRAP
        if boot.exists():
            return parse_start_response(boot.read_bytes()).address
        return (self.path / ADDRESS).read_text().strip()

    def read_start(self) -> StartResult:
        """The shim's start response as saved in the bundle (``bootstrap.json`` or ``address``)."""
        from .binary import StartResult, parse_start_response

        boot = self.path / BOOTSTRAP
        if boot.exists():
            return parse_start_response(boot.read_bytes())
        return StartResult((self.path / ADDRESS).read_text().strip())

    def write_shim_binary(self, path: str) -> None:
        _atomic_write(self.path / SHIM_BINARY_PATH, path.encode())

    def read_shim_binary(self) -> str | None:
        try:
            return (self.path / SHIM_BINARY_PATH).read_text().strip() or None
        except FileNotFoundError:
            return None

    def spec(self) -> dict | None:
        """``config.json`` parsed, or None."""
        try:
            return json.loads((self.path / CONFIG).read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def is_empty(self) -> bool:
        try:
            return not any(self.path.iterdir())
        except FileNotFoundError:
            return True

    def delete(self) -> None:
        """Unmount the rootfs (recursively), remove the bundle and its work folder.

        Raises OSError when the rootfs cannot be unmounted (the bundle is kept then).
        Absent parts are fine: deleting twice is a no-op.
        """
        try:
            work: str | None = os.readlink(self.path / "work")
        except OSError:
            work = None
        if self.rootfs.exists():
            unmount_blocking(self.rootfs, recursive=True)
            with contextlib.suppress(FileNotFoundError):
                self.rootfs.rmdir()
        _atomic_delete(self.path)
        if work is not None:
            _atomic_delete(Path(work))


def _prepare_permissions(path: Path, spec: bytes | None) -> None:
    """With user namespaces, let the container's root reach the bundle (0710, group =
    the host GID mapped to the container's GID 0), as containerd's bundle_linux does."""
    if not spec:
        return
    try:
        linux = json.loads(spec).get("linux") or {}
    except (ValueError, AttributeError):
        return
    for m in linux.get("gidMappings") or ():
        if m.get("containerID") == 0 and m.get("size", 0) > 0:
            os.chown(path, -1, int(m["hostID"]))
            os.chmod(path, 0o710)
            return


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _atomic_delete(path: Path) -> None:
    """Rename ``path`` to ``.<name>`` in its folder, then remove it."""
    hidden = path.with_name("." + path.name)
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        if not hidden.exists():
            return
    except OSError:
        if not path.exists():
            return
        raise
    shutil.rmtree(hidden, ignore_errors=True)
    if hidden.exists() or hidden.is_symlink():
        with contextlib.suppress(OSError):
            hidden.unlink()
