"""The devmapper snapshotter: config, pool metadata, state machine, dmsetup command lines,
pool operations and the snapshotter — against a fake device-mapper (no kernel needed).

Tests that need the kernel's device-mapper skip with "device-mapper is not
available in this kernel" where it is missing.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from aiocontainerd.config import Config, ConfigError, dump, load
from aiocontainerd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from aiocontainerd.mount import Mount
from aiocontainerd.mount.mounting import temp_mount
from aiocontainerd.plugin import PluginSet, SkipPlugin
from aiocontainerd.snapshots import Kind
from aiocontainerd.snapshotters import devmapper
from aiocontainerd.snapshotters.devmapper import config as dm_config
from aiocontainerd.snapshotters.devmapper.config import DevmapperConfig, DevmapperConfigError, parse_size
from aiocontainerd.snapshotters.devmapper.device_info import (
    ALWAYS,
    MAX_DEVICE_ID,
    TRANSITIONS,
    DeviceInfo,
    DeviceState,
    allowed,
    check_transition,
)
from aiocontainerd.snapshotters.devmapper.dmsetup import (
    Dmsetup,
    DmsetupError,
    full_device_path,
    parse_error,
    thin_pool_table,
    thin_table,
)
from aiocontainerd.snapshotters.devmapper.metadata import PoolMetadata
from aiocontainerd.snapshotters.devmapper.pool_device import PoolDevice
from aiocontainerd.snapshotters.devmapper.snapshotter import (
    FSTYPE_LABEL,
    DevmapperSnapshotter,
    mkfs_command,
)

S = DeviceState
POOL = "test-pool"


# -- a fake device-mapper ---------------------------------------------------------------------


class FakeDeviceMapper:
    """Answers dmsetup/mkfs/blkdiscard command lines like the kernel would, recording them.

    ``fail[(verb, detail)] = errno`` makes the next matching command fail once
    with that errno (``detail``: the message word, or the device name).
    """

    def __init__(self, pool: str = POOL) -> None:
        self.calls: list[list[str]] = []
        self.pools: dict[str, set[int]] = {pool: set()}
        self.devices: dict[str, dict[str, object]] = {}  # name -> table, suspended, open, mapped
        self.fail: dict[tuple[str, str], list[int]] = {}
        self.mapped_sectors = 100

    def inject(self, verb: str, detail: str, *codes: int) -> None:
        self.fail.setdefault((verb, detail), []).extend(codes)

    def _failure(self, verb: str, detail: str, what: str) -> tuple[int, str] | None:
        codes = self.fail.get((verb, detail))
        if codes:
            code = codes.pop(0)
            return 1, dm_error(what, detail, os.strerror(code))
        return None

    async def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        argv = list(argv)
        self.calls.append(argv)
        tool, *args = argv
        if tool.startswith("mkfs."):
            return self._failure("mkfs", args[-1], "mkfs") or (0, "")
        if tool == "blkdiscard":
            return self._failure("blkdiscard", args[-1], "discard") or (0, "")
        assert tool == "dmsetup", argv
        verb = args[0]
        if verb == "version":
            return 0, "Library version:   1.02.185\nDriver version:    4.47.0\n"
        if verb == "message":
            pool, _, message = args[1:]
            word, *ids = message.split()
            failure = self._failure("message", word, "message")
            if failure:
                return failure
            thin = self.pools[pool]
            device_id = int(ids[0])
            if word == "create_thin" or word == "create_snap":
                if device_id in thin:
                    return 1, dm_error("message", pool, "File exists")
                if word == "create_snap" and int(ids[1]) not in thin:
                    return 1, dm_error("message", pool, "No data available")
                thin.add(device_id)
                return 0, ""
            if word == "delete":
                if device_id not in thin:
                    return 1, dm_error("message", pool, "No data available")
                thin.remove(device_id)
                return 0, ""
        if verb == "create":
            name, _, table = args[1:]
            failure = self._failure("create", name, "create")
            if failure:
                return failure
            if name in self.devices or name in self.pools:
                return 1, dm_error("create", name, "Device or resource busy")
            self.devices[name] = {"table": table, "suspended": False, "open": 0}
            return 0, ""
        if verb in ("suspend", "resume"):
            name = args[1]
            failure = self._failure(verb, name, verb)
            if failure:
                return failure
            if name not in self.devices:
                return 1, f"Device {name} not found\nCommand failed.\n"
            self.devices[name]["suspended"] = verb == "suspend"
            return 0, ""
        if verb == "remove":
            name = args[-1].removeprefix("/dev/mapper/")
            failure = self._failure("remove", name, "remove")
            if failure:
                return failure
            if name not in self.devices:
                return 1, f"Device {args[-1]} not found\nCommand failed.\n"
            del self.devices[name]
            return 0, ""
        if verb == "info":
            name = args[-1] if len(args) > 7 else ""
            names = [name] if name else sorted([*self.pools, *self.devices])
            lines = []
            for n in names:
                if n in self.pools:
                    lines.append(f"{n} dm-0 L--w 253 0 0 1 0")
                elif n in self.devices:
                    d = self.devices[n]
                    attr = "Ls-w" if d["suspended"] else "L--w"
                    lines.append(f"{n} dm-{len(lines) + 1} {attr} 253 {len(lines) + 1} {d['open']} 1 0")
                else:
                    return 1, "Device does not exist.\nCommand failed.\n"
            return 0, "\n".join(lines) + "\n"
        if verb == "status":
            name = args[1]
            if name in self.pools:
                return 0, "0 32768 thin-pool 1 178/4161600 1/524288 - rw discard_passdown -\n"
            if name not in self.devices:
                return 1, f"Device {name} not found\nCommand failed.\n"
            return 0, f"0 2048 thin {self.mapped_sectors} 2047\n"
        if verb == "table":
            return 0, str(self.devices[args[1]]["table"]) + "\n"
        raise AssertionError(f"unexpected command {argv}")

    def dmsetup_calls(self, verb: str) -> list[list[str]]:
        return [c[1:] for c in self.calls if c[0] == "dmsetup" and c[1] == verb]


def dm_error(what: str, device: str, text: str) -> str:
    """dmsetup's output for a failed ioctl."""
    return f"device-mapper: {what} ioctl on {device}  failed: {text}\nCommand failed.\n"


@pytest.fixture
def fake() -> FakeDeviceMapper:
    return FakeDeviceMapper()


@pytest.fixture
async def metadata(tmp_path: Path) -> AsyncIterator[PoolMetadata]:
    store = PoolMetadata.open(tmp_path / f"{POOL}.db")
    yield store
    await store.close()


def config_for(root: Path, **changes: object) -> DevmapperConfig:
    values: dict[str, object] = {"root_path": str(root), "pool_name": POOL, "base_image_size": "1MB"}
    values.update(changes)
    return DevmapperConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def pool(tmp_path: Path, fake: FakeDeviceMapper) -> AsyncIterator[PoolDevice]:
    p = await PoolDevice.open(config_for(tmp_path), Dmsetup(fake), retry_delay=0)
    yield p
    await p.close()


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "size"), [
    ("128Mb", 128 << 20), ("128MiB", 128 << 20), ("128m", 128 << 20), ("8192MB", 8 << 30),
    ("10GB", 10 << 30), ("10 GB", 10 << 30), ("512k", 512 << 10), ("4096", 4096), ("1.5g", 3 << 29),
    ("2t", 2 << 40), ("1P", 1 << 50), ("16Mb", 16 << 20),
])
def test_parse_size_reads_binary_units_as_containerd(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["y", "", "1.2.3", "10 XB", "-1", "GB", "1 0"])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_default_config_is_valid_but_unconfigured() -> None:
    c = DevmapperConfig()
    assert (c.pool_name, c.root_path, c.base_image_size, c.fs_type) == ("", "", "", "ext4")
    with pytest.raises(DevmapperConfigError) as e:
        c.validate()
    for key in ("pool_name", "root_path", "base_image_size"):
        assert f"'{key}' is required" in str(e.value)


def test_config_checks_each_given_key() -> None:
    with pytest.raises(DevmapperConfigError, match=r"key 'base_image_size'.*'y'"):
        DevmapperConfig(base_image_size="y")
    with pytest.raises(DevmapperConfigError, match=r"key 'fs_type'.*'btrfs'"):
        DevmapperConfig(fs_type="btrfs")
    with pytest.raises(DevmapperConfigError, match="key 'pool_name'"):
        DevmapperConfig(pool_name="a pool")
    ok = DevmapperConfig(pool_name="/dev/mapper/pool", root_path="/r", base_image_size="10GB", fs_type="xfs")
    ok.validate()
    assert ok.base_image_size_bytes == 10 << 30
    assert DevmapperConfig(fs_type="ext2").filesystem == "ext2"  # accepted, as containerd does
    assert dm_config.FS_TYPES == ("ext4", "xfs", "ext2")


def test_config_file_errors_name_the_key(tmp_path: Path) -> None:
    types = {devmapper.PLUGIN.uri: DevmapperConfig}
    good = tmp_path / "good.toml"
    good.write_text('version = 3\n[plugins."io.containerd.snapshotter.v1.devmapper"]\n'
                    'pool_name = "containerd-pool"\nbase_image_size = "8192MB"\nasync_remove = true\n')
    c = load(good, types).plugins[devmapper.PLUGIN.uri]
    assert (c.pool_name, c.base_image_size_bytes, c.async_remove, c.discard_blocks) == \
        ("containerd-pool", 8 << 30, True, False)
    for body, key in [('fs_type = "zfs"', "fs_type"), ('base_image_size = "lots"', "base_image_size"),
                      ("discard_blocks = 1", "discard_blocks"), ('pool = "x"', "pool")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(f'version = 3\n[plugins."io.containerd.snapshotter.v1.devmapper"]\n{body}\n')
        with pytest.raises(ConfigError, match=key):
            load(bad, types)


def test_default_config_dumps_and_loads(tmp_path: Path) -> None:
    types = {devmapper.PLUGIN.uri: DevmapperConfig}
    text = dump(Config(), types)
    assert '[plugins."io.containerd.snapshotter.v1.devmapper"]' in text and 'fs_type = "ext4"' in text
    path = tmp_path / "default.toml"
    path.write_text(text)
    assert load(path, types).plugins[devmapper.PLUGIN.uri] == DevmapperConfig()


def test_mkfs_command_lines() -> None:
    assert mkfs_command("ext4", "", "/dev/mapper/d") == \
        ["mkfs.ext4", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", "/dev/mapper/d"]
    assert mkfs_command("ext4", "nodiscard", "/dev/mapper/d") == \
        ["mkfs.ext4", "-E", "nodiscard", "/dev/mapper/d"]
    assert mkfs_command("ext2", "", "/dev/mapper/d") == ["mkfs.ext2", "/dev/mapper/d"]
    assert mkfs_command("xfs", "noquota", "/dev/mapper/d") == ["mkfs.xfs", "/dev/mapper/d"]
    with pytest.raises(FailedPrecondition, match="not supported"):
        mkfs_command("btrfs", "", "/dev/mapper/d")


# -- state machine ---------------------------------------------------------------------------


def test_states_are_numbered_as_containerd_stores_them() -> None:
    assert [s.value for s in DeviceState] == list(range(14))
    assert str(S.ACTIVATED) == "Activated" and S.FAULTY == 13 and MAX_DEVICE_ID == 0xFFFFFF


@pytest.mark.parametrize("flow", [
    # create a thin device, commit it (suspend/resume/deactivate), remove it
    [S.UNKNOWN, S.CREATING, S.CREATED, S.ACTIVATING, S.ACTIVATED, S.SUSPENDING, S.SUSPENDED,
     S.RESUMING, S.RESUMED, S.DEACTIVATING, S.DEACTIVATED, S.REMOVING, S.REMOVED],
    # a failed activation is rolled back by deleting the device
    [S.UNKNOWN, S.CREATING, S.CREATED, S.ACTIVATING, S.REMOVING, S.REMOVED],
    # a failed create marks the device faulty; the name is reused with a new id
    [S.UNKNOWN, S.CREATING, S.FAULTY, S.UNKNOWN],
    # async removal, then cleanup
    [S.ACTIVATED, S.REMOVED, S.DEACTIVATING, S.DEACTIVATED, S.REMOVING, S.REMOVED],
    # a committed parent that is still loaded is suspended to snapshot it
    [S.DEACTIVATED, S.SUSPENDING, S.SUSPENDED, S.RESUMING, S.RESUMED],
    # retries of busy operations, re-activation after a reboot
    [S.ACTIVATED, S.ACTIVATING, S.ACTIVATING, S.ACTIVATED, S.SUSPENDING, S.SUSPENDING, S.SUSPENDED],
])
def test_containerd_flows_are_allowed(flow: list[DeviceState]) -> None:
    for old, new in itertools.pairwise(flow):
        check_transition("d", old, new)


@pytest.mark.parametrize(("old", "new"), [
    (S.ACTIVATED, S.CREATED), (S.REMOVED, S.ACTIVATED), (S.UNKNOWN, S.ACTIVATED), (S.CREATED, S.SUSPENDING),
    (S.REMOVED, S.UNKNOWN), (S.SUSPENDED, S.ACTIVATED), (S.CREATING, S.ACTIVATED),
])
def test_invalid_transitions_are_refused(old: DeviceState, new: DeviceState) -> None:
    assert not allowed(old, new)
    with pytest.raises(FailedPrecondition, match=f"invalid state transition {old} -> {new}"):
        check_transition("d", old, new)


def test_teardown_is_always_possible() -> None:
    assert set(TRANSITIONS) == set(DeviceState)
    for state in DeviceState:
        for target in ALWAYS:
            assert allowed(state, target)


# -- pool metadata ---------------------------------------------------------------------------


async def test_add_device_allocates_ids_from_one(metadata: PoolMetadata) -> None:
    a = await metadata.add_device(DeviceInfo(name="a", size=10, parent_name="p"))
    b = await metadata.add_device(DeviceInfo(name="b"))
    assert (a.device_id, b.device_id) == (1, 2)
    got = metadata.get_device("a")
    assert (got.name, got.size, got.parent_name, got.state, got.device_id) == ("a", 10, "p", S.UNKNOWN, 1)
    assert metadata.device_names() == ["a", "b"]


async def test_duplicate_and_empty_names(metadata: PoolMetadata) -> None:
    await metadata.add_device(DeviceInfo(name="a"))
    with pytest.raises(AlreadyExists, match="'a'"):
        await metadata.add_device(DeviceInfo(name="a"))
    with pytest.raises(InvalidArgument):
        await metadata.add_device(DeviceInfo(name=""))
    with pytest.raises(NotFound):
        metadata.get_device("")


async def test_lowest_free_id_is_reused(metadata: PoolMetadata) -> None:
    for name in "abc":
        await metadata.add_device(DeviceInfo(name=name))
    await metadata.remove_device("b")
    await metadata.remove_device("a")
    assert metadata.id_states() == {1: "free", 2: "free", 3: "taken"}
    assert (await metadata.add_device(DeviceInfo(name="d"))).device_id == 1
    assert (await metadata.add_device(DeviceInfo(name="e"))).device_id == 2
    assert (await metadata.add_device(DeviceInfo(name="f"))).device_id == 4


async def test_faulty_keeps_its_id_and_frees_its_name(metadata: PoolMetadata) -> None:
    await metadata.add_device(DeviceInfo(name="a"))
    await metadata.mark_faulty("a")
    assert metadata.get_device("a").state == S.FAULTY
    again = await metadata.add_device(DeviceInfo(name="a"))
    assert again.device_id == 2
    assert metadata.id_states() == {1: "faulty", 2: "taken"}
    await metadata.remove_device("a")
    assert (await metadata.add_device(DeviceInfo(name="b"))).device_id == 2


async def test_ids_run_out_at_24_bits(metadata: PoolMetadata) -> None:
    with metadata._env.begin(write=True) as txn:
        txn.put(b"sequence", str(MAX_DEVICE_ID - 1).encode(), db=metadata._meta)
    assert (await metadata.add_device(DeviceInfo(name="last"))).device_id == MAX_DEVICE_ID
    with pytest.raises(FailedPrecondition, match="couldn't find free device key"):
        await metadata.add_device(DeviceInfo(name="one-too-many"))
    with pytest.raises(NotFound):
        metadata.get_device("one-too-many")


async def test_update_device_guards_name_id_and_transitions(metadata: PoolMetadata) -> None:
    await metadata.add_device(DeviceInfo(name="a", size=1))

    def grow(info: DeviceInfo) -> None:
        info.size = 2
        info.parent_name = "p"
        info.state = S.CREATING
    assert (await metadata.update_device("a", grow)).size == 2

    def rename(info: DeviceInfo) -> None:
        info.name = "b"

    def renumber(info: DeviceInfo) -> None:
        info.device_id = 99

    def fail(info: DeviceInfo) -> None:
        info.size = 3
        raise RuntimeError("callback failed")

    with pytest.raises(FailedPrecondition, match="name didn't match"):
        await metadata.update_device("a", rename)
    with pytest.raises(FailedPrecondition, match="device id didn't match"):
        await metadata.update_device("a", renumber)
    with pytest.raises(RuntimeError):
        await metadata.update_device("a", fail)
    with pytest.raises(FailedPrecondition, match="Creating -> Activated"):
        await metadata.change_state("a", S.ACTIVATED)
    got = metadata.get_device("a")
    assert (got.name, got.device_id, got.size, got.state) == ("a", 1, 2, S.CREATING)
    with pytest.raises(NotFound):
        await metadata.change_state("missing", S.CREATING)
    with pytest.raises(NotFound):
        await metadata.remove_device("missing")


async def test_metadata_persists(tmp_path: Path) -> None:
    store = PoolMetadata.open(tmp_path / "p.db")
    await store.add_device(DeviceInfo(name="a", size=5))
    await store.change_state("a", S.CREATING)
    await store.close()
    store = PoolMetadata.open(tmp_path / "p.db")
    try:
        assert store.get_device("a") == DeviceInfo(name="a", size=5, device_id=1, state=S.CREATING)
        assert (await store.add_device(DeviceInfo(name="b"))).device_id == 2
    finally:
        await store.close()


# -- dmsetup command lines -------------------------------------------------------------------


async def test_dmsetup_command_lines(fake: FakeDeviceMapper) -> None:
    dm = Dmsetup(fake)
    await dm.create_device(POOL, 5)
    await dm.create_snapshot(POOL, 6, 5)
    await dm.activate_device(POOL, "dev6", 6, 1 << 20)
    await dm.suspend_device("dev6")
    await dm.resume_device("dev6")
    await dm.remove_device("dev6", "--retry", "--deferred")
    await dm.delete_device(POOL, 6)
    assert fake.calls == [
        ["dmsetup", "message", POOL, "0", "create_thin 5"],
        ["dmsetup", "message", POOL, "0", "create_snap 6 5"],
        ["dmsetup", "create", "dev6", "--table", f"0 2048 thin /dev/mapper/{POOL} 6"],
        ["dmsetup", "suspend", "dev6"],
        ["dmsetup", "resume", "dev6"],
        ["dmsetup", "remove", "--retry", "--deferred", "/dev/mapper/dev6"],
        ["dmsetup", "message", POOL, "0", "delete 6"],
    ]


async def test_dmsetup_pool_tables(fake: FakeDeviceMapper, tmp_path: Path) -> None:
    assert thin_pool_table("/dev/loop0", "/dev/loop1", 16 << 20, 128) == \
        "0 32768 thin-pool /dev/loop1 /dev/loop0 128 32768 1 skip_block_zeroing"
    assert thin_table(POOL, 3, 1 << 20, "/dev/sdb") == f"0 2048 thin /dev/mapper/{POOL} 3 /dev/sdb"
    calls: list[list[str]] = []

    async def record(argv: Sequence[str]) -> tuple[int, str]:
        calls.append(list(argv))
        return 0, ""
    data = tmp_path / "data"
    data.write_bytes(b"\0" * 65536)
    dm = Dmsetup(record)
    await dm.create_pool("p", str(data), "/dev/loop1", 128)
    await dm.reload_pool("p", "/dev/loop0", "/dev/loop1", 256, data_size_bytes=1 << 20)
    assert calls == [
        ["dmsetup", "create", "p", "--table",
         f"0 128 thin-pool /dev/loop1 {data} 128 32768 1 skip_block_zeroing"],
        ["dmsetup", "reload", "p", "--table",
         "0 2048 thin-pool /dev/loop1 /dev/loop0 256 32768 1 skip_block_zeroing"],
    ]
    assert full_device_path("x") == "/dev/mapper/x" and full_device_path("/dev/mapper/x") == "/dev/mapper/x"


async def test_dmsetup_errors_carry_the_errno(fake: FakeDeviceMapper) -> None:
    dm = Dmsetup(fake)
    await dm.create_device(POOL, 1)
    with pytest.raises(DmsetupError) as e:
        await dm.create_device(POOL, 1)
    assert e.value.errno == errno.EEXIST and "create_thin 1" in str(e.value)
    with pytest.raises(DmsetupError) as e:
        await dm.delete_device(POOL, 7)
    assert e.value.errno == errno.ENODATA
    await dm.activate_device(POOL, "d", 1, 4096)
    with pytest.raises(DmsetupError) as e:
        await dm.activate_device(POOL, "d", 1, 4096)
    assert e.value.errno == errno.EBUSY
    await dm.remove_device("gone")  # ENXIO: removed already, not an error
    with pytest.raises(DmsetupError) as e:
        await dm.suspend_device("gone")
    assert e.value.errno == errno.ENXIO


def test_parse_error() -> None:
    assert parse_error(dm_error("message", "pool", "File exists")) == errno.EEXIST
    assert parse_error(dm_error("remove", "x", "Device or resource busy")) == errno.EBUSY
    assert parse_error("Device /dev/mapper/snap-1 not found\nCommand failed.\n") == errno.ENXIO
    assert parse_error("Command failed.") is None
    assert parse_error("something odd happened\nCommand failed.\n") is None
    assert parse_error("x failed: Not a real error text\nCommand failed.\n") is None


async def test_dmsetup_info_and_status_parsing(fake: FakeDeviceMapper) -> None:
    dm = Dmsetup(fake)
    await dm.create_device(POOL, 1)
    await dm.activate_device(POOL, "d", 1, 4096)
    await dm.suspend_device("d")
    (info,) = await dm.info("d")
    assert (info.name, info.table_live, info.suspended, info.read_only, info.open_count,
            info.target_count) == ("d", True, True, False, 0, 1)
    assert fake.calls[-1] == ["dmsetup", "info", "--columns", "--noheadings", "-o",
                              "name,blkdevname,attr,major,minor,open,segments,events",
                              "--separator", " ", "d"]
    assert [i.name for i in await dm.info()] == ["d", POOL]
    status = await dm.status("d")
    assert (status.offset, status.length, status.target, status.params) == (0, 2048, "thin", ("100", "2047"))
    assert (await dm.version()).startswith("Library version")

    async def garbage(argv: Sequence[str]) -> tuple[int, str]:
        return 0, "not a status"
    with pytest.raises(DmsetupError, match="failed to parse"):
        await Dmsetup(garbage).status("d")
    with pytest.raises(DmsetupError, match="failed to parse"):
        await Dmsetup(garbage).info("d")


async def test_missing_binary_is_an_error() -> None:
    with pytest.raises(DmsetupError, match=r"command not found|No such file"):
        await Dmsetup(binary="/nonexistent/dmsetup").version()


# -- pool device -----------------------------------------------------------------------------


async def test_open_requires_the_pool(tmp_path: Path, fake: FakeDeviceMapper) -> None:
    with pytest.raises(DmsetupError):
        await PoolDevice.open(config_for(tmp_path, pool_name="nopool"), Dmsetup(fake))
    assert fake.dmsetup_calls("version")


async def test_create_thin_device(pool: PoolDevice, fake: FakeDeviceMapper) -> None:
    info = await pool.create_thin_device("thin-1", 1 << 20)
    assert info.device_id == 1
    stored = pool.metadata.get_device("thin-1")
    assert (stored.state, stored.error, stored.size) == (S.ACTIVATED, "", 1 << 20)
    assert fake.pools[POOL] == {1}
    assert fake.devices["thin-1"]["table"] == f"0 2048 thin /dev/mapper/{POOL} 1"
    assert await pool.is_activated("thin-1") and await pool.is_loaded("thin-1")
    assert await pool.get_usage("thin-1") == 100 * 512


async def test_snapshot_suspends_a_loaded_base(pool: PoolDevice, fake: FakeDeviceMapper) -> None:
    await pool.create_thin_device("base", 1 << 20)
    fake.calls.clear()
    snap = await pool.create_snapshot_device("base", "snap", 1 << 20)
    verbs = [c[1] if c[1] != "message" else c[4] for c in fake.calls if c[1] != "info"]
    assert verbs == ["suspend", "create_snap 2 1", "create", "resume"]
    assert snap.parent_name == "base"
    assert pool.metadata.get_device("base").state == S.RESUMED
    assert pool.metadata.get_device("snap").state == S.ACTIVATED
    # a base device-mapper no longer has loaded is not suspended
    await pool.deactivate_device("base")
    fake.calls.clear()
    await pool.create_snapshot_device("base", "snap2", 1 << 20)
    assert not fake.dmsetup_calls("suspend")


async def test_failed_create_marks_faulty(pool: PoolDevice, fake: FakeDeviceMapper) -> None:
    fake.inject("message", "create_thin", errno.EIO)
    with pytest.raises(DmsetupError):
        await pool.create_thin_device("d", 1 << 20)
    info = pool.metadata.get_device("d")
    assert info.state == S.FAULTY and "Input/output error" in info.error
    assert pool.metadata.id_states() == {1: "faulty"}
    again = await pool.create_thin_device("d", 1 << 20)  # a retry gets a fresh id
    assert again.device_id == 2 and pool.metadata.get_device("d").state == S.ACTIVATED


async def test_failed_activation_is_rolled_back(pool: PoolDevice, fake: FakeDeviceMapper) -> None:
    fake.inject("create", "d", errno.EINVAL)
    with pytest.raises(DmsetupError):
        await pool.create_thin_device("d", 1 << 20)
    with pytest.raises(NotFound):
        pool.metadata.get_device("d")
    assert fake.pools[POOL] == set()
    assert pool.metadata.id_states() == {1: "free"}


async def test_failed_rollback_marks_faulty(pool: PoolDevice, fake: FakeDeviceMapper) -> None:
    fake.inject("create", "d", errno.EINVAL)
    fake.inject("message", "delete", errno.EIO)
    with pytest.raises(DmsetupError):
        await pool.create_thin_device("d", 1 << 20)
    assert pool.metadata.get_device("d").state == S.FAULTY
    assert pool.metadata.id_states() == {1: "faulty"}


async def test_remove_device_retries_busy(pool: PoolDevice, fake: FakeDeviceMapper) -> None:
    await pool.create_thin_device("d", 1 << 20)
    fake.inject("remove", "d", errno.EBUSY, errno.EBUSY)
    await pool.remove_device("d")
    assert len(fake.dmsetup_calls("remove")) == 3
    assert fake.dmsetup_calls("remove")[-1] == ["remove", "--retry", "--force", "/dev/mapper/d"]
    assert "d" not in fake.devices and fake.pools[POOL] == set()
    with pytest.raises(NotFound):
        pool.metadata.get_device("d")
    assert pool.metadata.id_states() == {1: "free"}


async def test_remove_of_a_device_deleted_already(pool: PoolDevice, fake: FakeDeviceMapper) -> None:
    await pool.create_thin_device("d", 1 << 20)
    fake.pools[POOL].clear()  # gone from the pool behind our back: ENODATA is fine
    await pool.remove_device("d")
    with pytest.raises(NotFound):
        pool.metadata.get_device("d")


async def test_remove_failure_keeps_error(pool: PoolDevice, fake: FakeDeviceMapper) -> None:
    await pool.create_thin_device("d", 1 << 20)
    pool.max_retries = 2
    fake.inject("remove", "d", errno.EBUSY, errno.EBUSY)
    with pytest.raises(DmsetupError):
        await pool.remove_device("d")
    info = pool.metadata.get_device("d")
    assert info.state == S.DEACTIVATING and "busy" in info.error
    await pool.remove_device("d")  # a later attempt goes through


async def test_discard_blocks(tmp_path: Path, fake: FakeDeviceMapper) -> None:
    dm = Dmsetup(fake)
    dm.have_blkdiscard = lambda: True  # type: ignore[method-assign]
    p = await PoolDevice.open(config_for(tmp_path, discard_blocks=True), dm, retry_delay=0)
    try:
        await p.create_thin_device("d", 1 << 20)
        await p.create_thin_device("e", 1 << 20)
        fake.devices["e"]["open"] = 1
        await p.deactivate_device("d")
        await p.deactivate_device("e")
        discards = [c for c in fake.calls if c[0] == "blkdiscard"]
        assert discards == [["blkdiscard", "/dev/mapper/d"]]  # e was in use: skipped
    finally:
        await p.close()


async def test_discard_blocks_needs_blkdiscard(tmp_path: Path, fake: FakeDeviceMapper) -> None:
    dm = Dmsetup(fake)
    dm.have_blkdiscard = lambda: False  # type: ignore[method-assign]
    with pytest.raises(FailedPrecondition, match=r"'discard_blocks'.*blkdiscard"):
        await PoolDevice.open(config_for(tmp_path, discard_blocks=True), dm)


async def test_open_reconciles_states(tmp_path: Path, fake: FakeDeviceMapper) -> None:
    p = await PoolDevice.open(config_for(tmp_path), Dmsetup(fake), retry_delay=0)
    await p.create_thin_device("live", 1 << 20)
    await p.create_thin_device("rebooted", 1 << 20)
    await p.create_thin_device("crashed", 1 << 20)
    await p.metadata.change_state("crashed", S.SUSPENDING)
    await p.close()
    del fake.devices["rebooted"]  # a reboot took it away
    p = await PoolDevice.open(config_for(tmp_path), Dmsetup(fake), retry_delay=0)
    try:
        states = {d.name: d.state for d in p.devices()}
        assert states == {"live": S.ACTIVATED, "rebooted": S.ACTIVATED, "crashed": S.FAULTY}
        assert "rebooted" in fake.devices
        assert p.metadata.id_states()[3] == "faulty"
    finally:
        await p.close()


async def test_remove_pool(pool: PoolDevice, fake: FakeDeviceMapper) -> None:
    await pool.create_thin_device("d", 1 << 20)
    await pool.remove_pool()
    assert fake.dmsetup_calls("remove")[-1] == \
        ["remove", "--force", "--retry", "--deferred", f"/dev/mapper/{POOL}"]
    assert pool.metadata.get_device("d").state == S.DEACTIVATED


# -- the snapshotter on the fake -------------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_mounter(mounts: list[Mount]) -> AsyncIterator[str]:
    fake_mounter.seen.append(mounts)  # type: ignore[attr-defined]
    raise OSError("not mounting in unit tests")
    yield ""


fake_mounter.seen = []  # type: ignore[attr-defined]


async def open_snapshotter(root: Path, fake: FakeDeviceMapper, **changes: object) -> DevmapperSnapshotter:
    return await DevmapperSnapshotter.open(config_for(root, **changes), Dmsetup(fake), fake_mounter,
                                           retry_delay=0)


@pytest.fixture
async def sn(tmp_path: Path, fake: FakeDeviceMapper) -> AsyncIterator[DevmapperSnapshotter]:
    s = await open_snapshotter(tmp_path, fake)
    yield s
    await s.close()


async def test_snapshotter_lifecycle(sn: DevmapperSnapshotter, fake: FakeDeviceMapper,
                                     tmp_path: Path) -> None:
    assert (tmp_path / "metadata.lmdb").is_dir() and (tmp_path / f"{POOL}.db").exists()
    mounts = await sn.prepare("extract-1", labels={"containerd.io/snapshot/x": "y"})
    assert mounts == [Mount("ext4", f"/dev/mapper/{POOL}-snap-1", ())]
    assert fake_mounter.seen[-1] == mounts  # type: ignore[attr-defined] - lost+found removal was tried
    assert [c for c in fake.calls if c[0].startswith("mkfs")] == [
        ["mkfs.ext4", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", f"/dev/mapper/{POOL}-snap-1"]]
    assert (await sn.stat("extract-1")).labels[FSTYPE_LABEL] == "ext4"
    assert await sn.mounts("extract-1") == mounts
    assert (await sn.usage("extract-1")).size == 100 * 512

    await sn.commit("layer-1", "extract-1")
    info = await sn.stat("layer-1")
    assert info.kind == Kind.COMMITTED
    assert info.labels == {"containerd.io/snapshot/x": "y", FSTYPE_LABEL: "ext4"}
    assert f"{POOL}-snap-1" not in fake.devices  # deactivated
    assert sn.pool.metadata.get_device(f"{POOL}-snap-1").state == S.DEACTIVATED

    fake.mapped_sectors = 150
    assert await sn.prepare("work", "layer-1") == [Mount("ext4", f"/dev/mapper/{POOL}-snap-2", ())]
    assert (await sn.usage("work")).size == 50 * 512  # its own blocks, not its parent's
    assert await sn.view("look", "layer-1") == [Mount("ext4", f"/dev/mapper/{POOL}-snap-3", ("ro",))]
    assert sum(c[0].startswith("mkfs") for c in fake.calls) == 1

    with pytest.raises(FailedPrecondition, match="children"):
        await sn.remove("layer-1")
    with pytest.raises(AlreadyExists):
        await sn.commit("layer-1", "work")
    with pytest.raises(FailedPrecondition):
        await sn.commit("x", "look")
    with pytest.raises(AlreadyExists):
        await sn.prepare("work", "layer-1")
    with pytest.raises(NotFound):
        await sn.prepare("new", "missing")
    for key in ("work", "look", "layer-1"):
        await sn.remove(key)
    assert sn.pool.devices() == [] and fake.pools[POOL] == set()
    assert await sn.walk() == []


async def test_snapshotter_xfs_mounts_and_inherited_fstype(tmp_path: Path, fake: FakeDeviceMapper) -> None:
    s = await open_snapshotter(tmp_path, fake, fs_type="xfs")
    try:
        assert await s.prepare("a") == [Mount("xfs", f"/dev/mapper/{POOL}-snap-1", ("nouuid",))]
        mkfs = [c for c in fake.calls if c[0].startswith("mkfs")]
        assert mkfs == [["mkfs.xfs", f"/dev/mapper/{POOL}-snap-1"]]
        await s.commit("A", "a")
        assert await s.view("v", "A") == [Mount("xfs", f"/dev/mapper/{POOL}-snap-2", ("nouuid", "ro"))]
    finally:
        await s.close()
    s = await open_snapshotter(tmp_path, fake, fs_type="ext4")  # reopened with another default
    try:
        assert (await s.prepare("b", "A"))[0].type == "xfs"  # children keep their parent's filesystem
        assert (await s.prepare("c"))[0].type == "ext4"
    finally:
        await s.close()


async def test_snapshotter_mkfs_failure_rolls_back(sn: DevmapperSnapshotter, fake: FakeDeviceMapper) -> None:
    fake.inject("mkfs", f"/dev/mapper/{POOL}-snap-1", errno.EIO)
    with pytest.raises(FailedPrecondition, match=r"mkfs\.ext4 couldn't initialize"):
        await sn.prepare("a")
    with pytest.raises(NotFound):
        await sn.stat("a")
    assert sn.pool.devices() == [] and fake.pools[POOL] == set()


async def test_snapshotter_remove_failure_keeps_snapshot(sn: DevmapperSnapshotter,
                                                         fake: FakeDeviceMapper) -> None:
    await sn.prepare("a")
    sn.pool.max_retries = 1
    fake.inject("remove", f"{POOL}-snap-1", errno.EBUSY)
    with pytest.raises(FailedPrecondition, match="failed to remove device"):
        await sn.remove("a")
    assert (await sn.stat("a")).kind == Kind.ACTIVE
    await sn.remove("a")
    with pytest.raises(NotFound):
        await sn.remove("a")


async def test_snapshotter_async_remove(tmp_path: Path, fake: FakeDeviceMapper) -> None:
    s = await open_snapshotter(tmp_path, fake, async_remove=True)
    try:
        await s.prepare("a")
        await s.prepare("b")
        await s.remove("a")
        with pytest.raises(NotFound):
            await s.stat("a")
        assert s.pool.metadata.get_device(f"{POOL}-snap-1").state == S.REMOVED
        assert fake.pools[POOL] == {1, 2}
        await s.cleanup()
        assert [d.name for d in s.pool.devices()] == [f"{POOL}-snap-2"] and fake.pools[POOL] == {2}
    finally:
        await s.close()


# -- the plugin ------------------------------------------------------------------------------


async def _init_plugin(tmp_path: Path, cfg: DevmapperConfig | None) -> BaseException | None:
    plugins = PluginSet()
    await plugins.init_all([devmapper.PLUGIN], configs=lambda r: cfg, root=tmp_path / "root",
                           state=tmp_path / "state", properties={})
    return plugins.get(devmapper.PLUGIN.uri).error


async def test_plugin_skips_without_kernel_support(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devmapper, "device_mapper_available", lambda: False)
    error = await _init_plugin(tmp_path, config_for(tmp_path))
    assert isinstance(error, SkipPlugin) and str(error) == "device-mapper is not available in this kernel"


async def test_plugin_skips_when_not_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devmapper, "device_mapper_available", lambda: True)
    error = await _init_plugin(tmp_path, DevmapperConfig())
    assert isinstance(error, SkipPlugin) and str(error) == "devmapper not configured"
    assert not (tmp_path / "root").exists()


async def test_plugin_reports_missing_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devmapper, "device_mapper_available", lambda: True)
    error = await _init_plugin(tmp_path, DevmapperConfig(pool_name="pool"))
    assert isinstance(error, DevmapperConfigError) and "'base_image_size' is required" in str(error)


async def test_plugin_on_this_machine(tmp_path: Path) -> None:
    error = await _init_plugin(tmp_path, DevmapperConfig())
    assert isinstance(error, SkipPlugin)
    if not devmapper.device_mapper_available():
        assert str(error) == devmapper.SKIP_NO_KERNEL


def test_device_mapper_detection(tmp_path: Path) -> None:
    misc = tmp_path / "misc"
    misc.write_text(" 62 tun\n236 device-mapper\n")
    assert devmapper.device_mapper_available(str(misc), str(tmp_path / "nosys"))
    misc.write_text(" 62 tun\n234 btrfs-control\n")
    assert not devmapper.device_mapper_available(str(misc), str(tmp_path / "nosys"))
    (tmp_path / "sys" / "device-mapper").mkdir(parents=True)
    assert devmapper.device_mapper_available(str(tmp_path / "nomisc"), str(tmp_path / "sys"))


# -- the real kernel -------------------------------------------------------------------------


def need_kernel() -> None:
    if not devmapper.device_mapper_available():
        pytest.skip(devmapper.SKIP_NO_KERNEL)
    if shutil.which("dmsetup") is None:
        pytest.skip("dmsetup is not installed (apt-get install dmsetup)")


async def test_real_dmsetup_version() -> None:
    need_kernel()
    assert "Driver version" in await Dmsetup().version()


@pytest.fixture
def thin_pool(tmp_path: Path) -> Iterator[str]:
    """A real thin-pool on two loop devices (containerd's docs/snapshotters/devmapper.md)."""
    need_kernel()
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("a thin-pool needs root and losetup")
    name = f"aioc-test-pool-{os.getpid()}"
    devices = []
    try:
        for part, size in (("data", 256 << 20), ("meta", 16 << 20)):
            image = tmp_path / part
            with open(image, "wb") as f:
                f.truncate(size)
            out = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                                 text=True, check=False)
            if out.returncode != 0:
                pytest.skip(f"no free loop device: {out.stderr.strip()}")
            devices.append(out.stdout.strip())
        table = thin_pool_table(devices[0], devices[1], 256 << 20, 128)
        subprocess.run(["dmsetup", "create", name, "--table", table], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["dmsetup", "remove", "--force", "--retry", name], capture_output=True, check=False)
        for device in devices:
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


async def test_real_thin_pool_lifecycle(thin_pool: str, tmp_path: Path) -> None:
    config = DevmapperConfig(root_path=str(tmp_path / "root"), pool_name=thin_pool, base_image_size="32MB")
    sn = await DevmapperSnapshotter.open(config)
    try:
        mounts = await sn.prepare("a")
        async with temp_mount(mounts) as d:
            (d / "hello").write_text("world")
            assert not (d / "lost+found").exists()
        await sn.commit("A", "a")
        async with temp_mount(await sn.view("v", "A")) as d:
            assert (d / "hello").read_text() == "world"
        assert (await sn.usage("A")).size > 0
        await sn.remove("v")
        await sn.remove("A")
    finally:
        await sn.reset_pool()
        await sn.close()

