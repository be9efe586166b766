"""A thin wrapper over the ``dmsetup`` command (containerd's ``devmapper/dmsetup``).

Each function builds one ``dmsetup`` command line, as containerd's does, and
runs it through a :class:`Runner`: by default a real subprocess
(:class:`SubprocessRunner`), in tests a fake that records the command lines and
answers like device-mapper would. Nothing here keeps state.

The thin-pool messages (``dmsetup message <pool> 0 "<msg>"``):

- ``create_thin <id>``: a new, empty thin device ``<id>`` in the pool;
- ``create_snap <id> <origin id>``: thin device ``<id>`` as a snapshot of
  ``<origin id>`` (the origin must be suspended while this runs, if active);
- ``delete <id>``: drop thin device ``<id>`` and its blocks.

A thin device becomes a block device ``/dev/mapper/<name>`` by
``dmsetup create <name> --table "0 <sectors> thin /dev/mapper/<pool> <id>"``
and goes away by ``dmsetup remove``. Sizes in tables are 512-byte sectors.

Errors: a failed command raises :class:`DmsetupError`. Like containerd, the
Linux error behind it is recovered from dmsetup's message (``device-mapper:
message ioctl on <pool> failed: File exists`` -> ``EEXIST``; ``Device ... not
found`` -> ``ENXIO``) into :attr:`DmsetupError.errno`, so callers can tell
"already exists" (EEXIST), "busy" (EBUSY), "no such device" (ENXIO) and
"already deleted" (ENODATA) apart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import shutil
from collections.abc import Sequence
from typing import Protocol

DEV_MAPPER_DIR = "/dev/mapper/"
SECTOR_SIZE = 512
#: The low water mark of thin-pool tables we make, in data blocks (containerd's choice).
LOW_WATER_MARK = 32768
SKIP_ZEROING = "skip_block_zeroing"

REMOVE_FORCE = "--force"        #: replace the table of a busy device with one failing all I/O
REMOVE_RETRY = "--retry"        #: retry for a few seconds before failing
REMOVE_DEFERRED = "--deferred"  #: remove when the last user closes the device

_ERRNO_BY_TEXT = {os.strerror(code).lower(): code for code in errno.errorcode}


class Runner(Protocol):
    """Runs one command: returns its exit status and its combined stdout+stderr."""

    async def __call__(self, argv: Sequence[str]) -> tuple[int, str]: ...


class SubprocessRunner:
    """Runs commands as async subprocesses (stdout and stderr merged)."""

    async def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
        except FileNotFoundError:
            return 127, f"{argv[0]}: command not found"
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace")


class DmsetupError(Exception):
    """A failed ``dmsetup`` (or ``blkdiscard``) command; ``errno`` when dmsetup named one."""

    def __init__(self, argv: Sequence[str], output: str, errno_: int | None = None) -> None:
        self.argv = list(argv)
        self.output = output.strip()
        self.errno = errno_
        reason = os.strerror(errno_) if errno_ is not None else self.output
        super().__init__(f"{' '.join(self.argv)}: {reason}")


class DeviceInUse(DmsetupError):
    """A device that is open elsewhere cannot be discarded (containerd's ``ErrInUse``)."""


def parse_error(output: str) -> int | None:
    """The errno named by dmsetup's error output, or None (see the module doc)."""
    lines = output.split("\n", 1)
    if len(lines) < 2:
        return None
    line = lines[0].rstrip()
    if line.endswith("not found"):
        return errno.ENXIO
    idx = line.rfind("failed: ")
    if idx < 0:
        return None
    return _ERRNO_BY_TEXT.get(line[idx + len("failed: "):].strip().lower())


def full_device_path(name: str) -> str:
    """``/dev/mapper/<name>`` (a name that has the prefix already is kept)."""
    return name if name.startswith(DEV_MAPPER_DIR) else DEV_MAPPER_DIR + name


def thin_pool_table(data_device: str, meta_device: str, data_size_bytes: int,
                    block_size_sectors: int) -> str:
    """The ``thin-pool`` target line: start, length, metadata dev, data dev, block size,
    low water mark, and one feature (skip block zeroing)."""
    return (f"0 {data_size_bytes // SECTOR_SIZE} thin-pool {meta_device} {data_device} "
            f"{block_size_sectors} {LOW_WATER_MARK} 1 {SKIP_ZEROING}")


def thin_table(pool_name: str, device_id: int, size_bytes: int, external_origin: str = "") -> str:
    """The ``thin`` target line of device ``device_id`` of ``pool_name`` (size in bytes)."""
    line = f"0 {size_bytes // SECTOR_SIZE} thin {full_device_path(pool_name)} {device_id} {external_origin}"
    return line.strip()


def block_device_size(path: str) -> int:
    """Size in bytes of a block device or file (blocking: call it in a thread)."""
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)


@dataclasses.dataclass(frozen=True)
class DmDeviceInfo:
    """One line of ``dmsetup info`` (see dmsetup(8) for the ``attr`` letters)."""

    name: str
    block_device_name: str
    table_live: bool
    table_inactive: bool
    suspended: bool
    read_only: bool
    major: int
    minor: int
    open_count: int
    target_count: int
    event_number: int


@dataclasses.dataclass(frozen=True)
class DeviceStatus:
    """``dmsetup status <name>``: offset, length (sectors), target type and its parameters."""

    raw_output: str
    offset: int
    length: int
    target: str
    params: tuple[str, ...]


class Dmsetup:
    """The ``dmsetup`` commands the devmapper snapshotter uses (see the module doc)."""

    def __init__(self, runner: Runner | None = None, binary: str = "dmsetup",
                 blkdiscard: str = "blkdiscard") -> None:
        self.runner: Runner = runner or SubprocessRunner()
        self.binary = binary
        self.blkdiscard_binary = blkdiscard

    async def run(self, *args: str) -> str:
        """Run ``dmsetup <args>``; returns its trimmed output, raises :class:`DmsetupError`."""
        argv = [self.binary, *args]
        code, output = await self.runner(argv)
        if code != 0:
            raise DmsetupError(argv, output, parse_error(output))
        return output.strip()

    async def version(self) -> str:
        return await self.run("version")

    async def create_pool(self, pool_name: str, data_device: str, meta_device: str,
                          block_size_sectors: int, data_size_bytes: int | None = None) -> None:
        """``dmsetup create <pool> --table <thin-pool table>`` (size read from the data device
        unless given)."""
        if data_size_bytes is None:
            data_size_bytes = await asyncio.to_thread(block_device_size, data_device)
        await self.run("create", pool_name, "--table",
                       thin_pool_table(data_device, meta_device, data_size_bytes, block_size_sectors))

    async def reload_pool(self, pool_name: str, data_device: str, meta_device: str,
                          block_size_sectors: int, data_size_bytes: int | None = None) -> None:
        """``dmsetup reload <pool> --table <thin-pool table>``."""
        if data_size_bytes is None:
            data_size_bytes = await asyncio.to_thread(block_device_size, data_device)
        await self.run("reload", pool_name, "--table",
                       thin_pool_table(data_device, meta_device, data_size_bytes, block_size_sectors))

    async def create_device(self, pool_name: str, device_id: int) -> None:
        """Send ``create_thin <id>`` to the pool (EEXIST if the ID is in use)."""
        await self.run("message", pool_name, "0", f"create_thin {device_id}")

    async def create_snapshot(self, pool_name: str, device_id: int, base_device_id: int) -> None:
        """Send ``create_snap <id> <base id>``; the caller suspends an active base first."""
        await self.run("message", pool_name, "0", f"create_snap {device_id} {base_device_id}")

    async def delete_device(self, pool_name: str, device_id: int) -> None:
        """Send ``delete <id>`` (ENODATA if it is not in the pool)."""
        await self.run("message", pool_name, "0", f"delete {device_id}")

    async def activate_device(self, pool_name: str, device_name: str, device_id: int, size_bytes: int,
                              external_origin: str = "") -> None:
        """``dmsetup create <name> --table <thin table>`` (EBUSY if the name is taken)."""
        await self.run("create", device_name, "--table",
                       thin_table(pool_name, device_id, size_bytes, external_origin))

    async def suspend_device(self, device_name: str) -> None:
        await self.run("suspend", device_name)

    async def resume_device(self, device_name: str) -> None:
        await self.run("resume", device_name)

    async def table(self, device_name: str) -> str:
        return await self.run("table", device_name)

    async def remove_device(self, device_name: str, *options: str) -> None:
        """``dmsetup remove [--force] [--retry] [--deferred] /dev/mapper/<name>``; a device that
        is already gone (ENXIO) is not an error, as deferred removal may have finished."""
        try:
            await self.run("remove", *options, full_device_path(device_name))
        except DmsetupError as e:
            if e.errno != errno.ENXIO:
                raise

    async def info(self, device_name: str = "") -> list[DmDeviceInfo]:
        """``dmsetup info`` in columns for ``device_name`` (all devices when empty)."""
        args = ["info", "--columns", "--noheadings", "-o",
                "name,blkdevname,attr,major,minor,open,segments,events", "--separator", " "]
        if device_name:
            args.append(device_name)
        output = await self.run(*args)
        infos = []
        for line in output.splitlines():
            fields = line.split()
            if len(fields) != 8:
                raise DmsetupError([self.binary, *args], f"failed to parse line {line!r}")
            name, blk, attr, *numbers = fields
            try:
                major, minor, open_count, targets, events = (int(n) for n in numbers)
            except ValueError:
                raise DmsetupError([self.binary, *args], f"failed to parse line {line!r}") from None
            infos.append(DmDeviceInfo(name, blk, "L" in attr, "I" in attr, "s" in attr, "r" in attr,
                                      major, minor, open_count, targets, events))
        return infos

    async def status(self, device_name: str) -> DeviceStatus:
        """``dmsetup status <name>``, e.g. ``0 204800 thin 17280 204799`` for a thin device
        (its first parameter: mapped sectors)."""
        output = await self.run("status", device_name)
        parts = output.split(" ")
        if len(parts) < 4:
            raise DmsetupError([self.binary, "status", device_name], f"failed to parse output: {output!r}")
        try:
            offset, length = int(parts[0]), int(parts[1])
        except ValueError:
            raise DmsetupError([self.binary, "status", device_name],
                               f"failed to parse output: {output!r}") from None
        return DeviceStatus(output, offset, length, parts[2], tuple(parts[3:]))

    async def is_in_use(self, device_name: str) -> bool:
        infos = await self.info(device_name)
        if len(infos) != 1:
            raise DmsetupError([self.binary, "info", device_name], "could not get device info")
        return infos[0].open_count != 0

    async def discard_blocks(self, device_name: str) -> None:
        """``blkdiscard /dev/mapper/<name>``; raises :class:`DeviceInUse` if the device is open."""
        if await self.is_in_use(device_name):
            raise DeviceInUse(["blkdiscard", device_name], "device is in use")
        argv = [self.blkdiscard_binary, full_device_path(device_name)]
        code, output = await self.runner(argv)
        if code != 0:
            raise DmsetupError(argv, output)

    def have_blkdiscard(self) -> bool:
        return shutil.which(self.blkdiscard_binary) is not None
