"""The Windows layer format (Files/, Hives/, UtilityVM/, PAX metadata, whiteouts), layer folders,
``windows-layer`` mounts, and the Windows snapshotter plugin skipping on Linux."""

from __future__ import annotations

import base64
import io
import os
import tarfile
from pathlib import Path

import pytest

from aiocontainerd import Client, Daemon, builtins
from aiocontainerd.errors import InvalidArgument, Unimplemented
from aiocontainerd.mount import Mount
from aiocontainerd.plugin import PluginSet, SkipPlugin
from aiocontainerd.snapshots import Kind
from aiocontainerd.snapshotters import btrfs, devmapper, windows
from aiocontainerd.snapshotters.windows import layer as wl
from aiocontainerd.snapshotters.windows import mounts as wm
from aiocontainerd.snapshotters.windows.layer import (
    FILE_ATTRIBUTE_ARCHIVE,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_HIDDEN,
    FILE_ATTRIBUTE_REPARSE_POINT,
    EntryType,
    InvalidLayer,
    LayerDirectory,
    LayerEntry,
    WinFileInfo,
    read_layer,
    write_layer,
)
from tests.conftest import make_config

T0 = 1_700_000_000_123_456_700  # ns; Windows times have 100 ns resolution
DIR = WinFileInfo(FILE_ATTRIBUTE_DIRECTORY, T0, T0 + 100, T0 + 200, T0 + 300)
FILE = WinFileInfo(FILE_ATTRIBUTE_ARCHIVE, T0 + 1000, T0 + 1100, T0 + 1200, T0 + 1300)


def d(path: str) -> LayerEntry:
    return LayerEntry(EntryType.DIRECTORY, path, DIR)


def f(path: str, data: bytes = b"", **kw: object) -> LayerEntry:
    return LayerEntry(EntryType.FILE, path, FILE, data=data, **kw)  # type: ignore[arg-type]


def tar_of(entries: list[LayerEntry]) -> io.BytesIO:
    buf = io.BytesIO()
    write_layer(buf, entries)
    buf.seek(0)
    return buf


def raw_tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m, data in members:
            if data is not None:
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def member(name: str, type_: bytes = tarfile.REGTYPE, **pax: str) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = type_
    m.pax_headers = dict(pax)
    return m


def link(name: str, target: str) -> tarfile.TarInfo:
    m = member(name, tarfile.LNKTYPE)
    m.linkname = target
    return m


BASE = [
    d("Files"),
    d("Files/Windows"),
    f("Files/Windows/win.ini", b"[fonts]\r\n", security_descriptor=b"\x01\x00\x04\x80sd",
      extended_attributes={"$KERNEL.PURGE.ESBCACHE": b"\x00\x01"}),
    f("Files/Windows/notepad.exe", b"MZ" * 100, streams={"Zone.Identifier": b"[ZoneTransfer]\r\nZoneId=3"}),
    LayerEntry(EntryType.SYMLINK, "Files/Documents and Settings",
               WinFileInfo(FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_REPARSE_POINT | FILE_ATTRIBUTE_HIDDEN,
                           T0, T0, T0, T0),
               link_target="C:\\Users", mount_point=True),
    LayerEntry(EntryType.LINK, "Files/Windows/notepad2.exe", link_target="Files/Windows/notepad.exe"),
    d("UtilityVM"),
    d("UtilityVM/Files"),
    d("UtilityVM/Files/EFI"),
    d("UtilityVM/Files/EFI/Microsoft"),
    d("UtilityVM/Files/EFI/Microsoft/Boot"),
    f("UtilityVM/Files/EFI/Microsoft/Boot/BCD", b"regf-bcd"),
    f("UtilityVM/Files/kernel", b"uvm kernel"),
]


# -- the tar format --------------------------------------------------------------------------


def test_round_trip_keeps_every_detail() -> None:
    assert list(read_layer(tar_of(BASE), base=True)) == BASE


def test_pax_records_as_backuptar_writes_them() -> None:
    with tarfile.open(fileobj=tar_of(BASE), mode="r") as tf:
        members = {m.name: m for m in tf.getmembers()}
    ini = members["Files/Windows/win.ini"]
    assert ini.pax_headers["MSWINDOWS.fileattr"] == "32"
    assert ini.pax_headers["MSWINDOWS.rawsd"] == base64.b64encode(b"\x01\x00\x04\x80sd").decode()
    assert ini.pax_headers["MSWINDOWS.xattr.$KERNEL.PURGE.ESBCACHE"] == "AAE="
    assert ini.pax_headers["mtime"] == "1700000000.1234579"  # last write time, 100 ns digits
    assert ini.pax_headers["LIBARCHIVE.creationtime"] == "1700000000.1234577"
    assert ini.pax_headers["atime"] == "1700000000.1234578"
    assert ini.pax_headers["ctime"] == "1700000000.123458"  # trailing zeros trimmed
    assert members["Files"].isdir() and members["Files"].pax_headers["MSWINDOWS.fileattr"] == "16"
    junction = members["Files/Documents and Settings"]
    assert junction.issym() and junction.linkname == "C:\\Users"
    assert junction.pax_headers["MSWINDOWS.mountpoint"] == "1"
    stream = members["Files/Windows/notepad.exe:Zone.Identifier"]
    assert stream.isreg() and stream.size == len(b"[ZoneTransfer]\r\nZoneId=3")
    link = members["Files/Windows/notepad2.exe"]
    assert link.islnk() and link.linkname == "Files/Windows/notepad.exe"
    names = list(members)
    stream_at = names.index("Files/Windows/notepad.exe:Zone.Identifier")
    assert stream_at == names.index("Files/Windows/notepad.exe") + 1


def test_whiteouts_are_empty_wh_entries() -> None:
    layer = [d("Files"), d("Files/Windows"), LayerEntry(EntryType.WHITEOUT, "Files/Windows/old.dll")]
    with tarfile.open(fileobj=tar_of(layer), mode="r") as tf:
        wh = tf.getmember("Files/Windows/.wh.old.dll")
    assert wh.isreg() and wh.size == 0
    assert list(read_layer(tar_of(layer))) == layer


def test_defaults_without_windows_records() -> None:
    plain = member("Files/dir/", tarfile.DIRTYPE)
    plain.mtime = 1_600_000_000
    data = member("Files/dir/a.txt")
    data.mtime = 1_600_000_001
    entries = list(read_layer(raw_tar((plain, None), (data, b"hello"))))
    assert entries[0] == LayerEntry(EntryType.DIRECTORY, "Files/dir",
                                    WinFileInfo(FILE_ATTRIBUTE_DIRECTORY, *[1_600_000_000 * 10**9] * 4))
    assert entries[1].info.attributes == 0 and entries[1].data == b"hello"
    assert entries[1].info.creation_time == 1_600_000_001 * 10**9  # creation time defaults to mtime


def test_legacy_sddl_is_kept() -> None:
    m = member("Files/x", **{"MSWINDOWS.sd": "O:BAG:SYD:(A;;FA;;;BA)"})
    (entry,) = read_layer(raw_tar((m, b"")))
    assert entry.sddl == "O:BAG:SYD:(A;;FA;;;BA)" and entry.security_descriptor == b""
    assert list(read_layer(tar_of([entry]))) == [entry]


def test_hives_of_a_non_base_layer() -> None:
    layer = [d("Files"), d("Hives"), *(f(f"Hives/{h}", b"regf") for h in wl.DELTA_HIVES)]
    assert [e.path for e in read_layer(tar_of(layer))] == [e.path for e in layer]


@pytest.mark.parametrize(("members", "base", "message"), [
    ([(member("Windows/x"), b"")], False, "only Files/, Hives/ and UtilityVM/"),
    ([(member("/Files/x"), b"")], False, "absolute"),
    ([(member("Files/../../etc/passwd"), b"")], False, r"'\.\.'"),
    ([(member("Files/a\\b"), b"")], False, "backslash"),
    ([(member("Files/dev", tarfile.CHRTYPE), None)], False, "unsupported entry type"),
    ([(member("Files/fifo", tarfile.FIFOTYPE), None)], False, "unsupported entry type"),
    ([(member("Files/.wh.gone"), b"")], True, "base layer cannot have tombstones"),
    ([(member("Hives/.wh.System_Delta"), b"")], False, "invalid tombstone"),
    ([(member("UtilityVM/.wh.x"), b"")], False, "invalid tombstone"),
    ([(member("Files/.wh..wh..opq"), b"")], False, "opaque-directory whiteouts"),
    ([(link("Hives/x", "Hives/y"), None)], False, "invalid hard link"),
    ([(link("Files/x", "Files"), None)], False, "invalid hard link"),
    ([(link("UtilityVM/Files/x", "Files/y"), None)], True, "invalid hard link"),
    ([(link("Files/x", ""), None)], False, "empty entry name"),
    ([(member("Files/x:stream"), b"s")], False, "without its file"),
    ([(member("Files/a"), b""), (member("Files/b:stream"), b"s")], False, "without its file"),
    ([(member("Files/a:b", tarfile.DIRTYPE), None)], False, "':' in a name"),
    ([(member("UtilityVM/Files/x"), b"")], False, "missing UtilityVM directory"),
    ([(member("UtilityVM", tarfile.DIRTYPE), None), (member("UtilityVM/Other"), b"")], False,
     "invalid UtilityVM layer"),
    ([(member("Files/x", **{"MSWINDOWS.fileattr": "lots"}), b"")], False, "invalid MSWINDOWS.fileattr"),
    ([(member("Files/x", **{"MSWINDOWS.rawsd": "!!"}), b"")], False, "not base64"),
    ([(member("Files/x", **{"LIBARCHIVE.creationtime": "yesterday"}), b"")], False, "invalid PAX time"),
])
def test_invalid_layers(members: list[tuple[tarfile.TarInfo, bytes | None]], base: bool,
                        message: str) -> None:
    with pytest.raises(InvalidLayer, match=message):
        list(read_layer(raw_tar(*members), base=base))


def test_hard_links_must_stay_in_their_tree() -> None:
    bad = member("Files/x", tarfile.LNKTYPE)
    bad.linkname = "UtilityVM/Files/kernel"
    with pytest.raises(InvalidLayer, match="invalid hard link"):
        list(read_layer(raw_tar((bad, None))))
    good = member("UtilityVM/Files/k2", tarfile.LNKTYPE)
    good.linkname = "UtilityVM/Files/kernel"
    assert next(read_layer(raw_tar((good, None)), base=True)).link_target == "UtilityVM/Files/kernel"


def test_times() -> None:
    assert wl.format_pax_time(1_500_000_000 * 10**9) == "1500000000"
    assert wl.parse_pax_time("1500000000.5") == 1_500_000_000_500_000_000
    assert wl.parse_pax_time("-1.5") == -1_500_000_000
    ns = 1_700_000_000_123_456_700
    assert wl.ns_from_filetime(wl.filetime_from_ns(ns)) == ns
    assert wl.filetime_from_ns(0) == 116444736000000000


# -- layer folders ---------------------------------------------------------------------------


def test_base_layer_apply_and_export(tmp_path: Path) -> None:
    root = tmp_path / "base"
    size = LayerDirectory(root).apply(tar_of(BASE))
    assert size == sum(len(e.data) for e in BASE)
    assert (root / "Files/Windows/win.ini").read_bytes() == b"[fonts]\r\n"
    assert os.readlink(root / "Files/Documents and Settings") == "C:\\Users"
    windir = root / "Files/Windows"
    assert (windir / "notepad2.exe").stat().st_ino == (windir / "notepad.exe").stat().st_ino
    for hive in wl.BASE_HIVES:  # ensured, as ConvertToBaseLayer does
        assert (root / wl.REGISTRY_FILES / hive).is_file()
    assert (root / "bcd.bak").read_bytes() == b"regf-bcd"  # the import mutates the BCD: a copy is kept
    assert not (root / wl.TOMBSTONES_FILE).exists()
    exported = list(read_layer(_export(LayerDirectory(root)), base=True))
    by_path = {e.path: e for e in exported}
    for e in BASE:
        if e.type == EntryType.LINK:  # exported as the file it links to
            assert by_path[e.path].data == by_path[e.link_target].data
        else:
            assert by_path[e.path] == e
    assert set(by_path) - {e.path for e in BASE} == {
        "Files/Windows/System32", "Files/Windows/System32/config",
        *(f"{wl.REGISTRY_FILES}/{h}" for h in wl.BASE_HIVES)}


def _export(layer: LayerDirectory) -> io.BytesIO:
    buf = io.BytesIO()
    layer.export(buf)
    buf.seek(0)
    return buf


def test_base_layer_uvm_needs_its_bcd(tmp_path: Path) -> None:
    layer = [d("Files"), d("UtilityVM"), d("UtilityVM/Files"), f("UtilityVM/Files/kernel", b"k")]
    with pytest.raises(InvalidLayer, match="BCD"):
        LayerDirectory(tmp_path / "l").apply(tar_of(layer))


def test_non_base_layer_with_tombstones_links_and_uvm(tmp_path: Path) -> None:
    base = tmp_path / "base"
    LayerDirectory(base).apply(tar_of(BASE))
    child = tmp_path / "child"
    layer = [
        d("Files"), d("Files/Windows"),
        LayerEntry(EntryType.WHITEOUT, "Files/Windows/win.ini"),
        f("Files/Windows/new.txt", b"new"),
        LayerEntry(EntryType.WHITEOUT, "Files/Windows/new.txt"),  # added and deleted: gone
        LayerEntry(EntryType.LINK, "Files/Windows/np3.exe", link_target="Files/Windows/notepad.exe"),
        d("Hives"), f("Hives/Software_Delta", b"regf-delta"),
        d("UtilityVM"),
        LayerEntry(EntryType.WHITEOUT, "UtilityVM/Files/kernel"),
        f("UtilityVM/Files/kernel2", b"k2"),
    ]
    LayerDirectory(child, [base]).apply(tar_of(layer))
    assert (child / wl.TOMBSTONES_FILE).read_text(encoding="utf-8") == \
        "\ufeffVersion 1.0\n\\Windows\\win.ini\n\\Windows\\new.txt\n"
    assert not (child / "Files/Windows/new.txt").exists()
    # a hard link into the parent layer
    linked = (child / "Files/Windows/np3.exe").stat().st_ino
    assert linked == (base / "Files/Windows/notepad.exe").stat().st_ino
    # the utility VM is cloned from the parent (hard links; the BCD copied), then changed
    assert (child / "UtilityVM/Files/EFI/Microsoft/Boot/BCD").read_bytes() == b"regf-bcd"
    assert (child / wl.UVM_BCD).stat().st_ino != (base / wl.UVM_BCD).stat().st_ino
    assert not (child / "UtilityVM/Files/kernel").exists() and (base / "UtilityVM/Files/kernel").exists()
    assert (child / "UtilityVM/Files/kernel2").read_bytes() == b"k2"
    assert not (child / wl.REGISTRY_FILES).exists()  # hives are ensured for base layers only

    exported = list(read_layer(_export(LayerDirectory(child, [base]))))
    paths = [(e.type, e.path) for e in exported]
    i = paths.index((EntryType.DIRECTORY, "Files/Windows"))
    assert paths[i + 1:i + 3] == [(EntryType.WHITEOUT, "Files/Windows/new.txt"),
                                  (EntryType.WHITEOUT, "Files/Windows/win.ini")]
    assert (EntryType.FILE, "Hives/Software_Delta") in paths
    assert (EntryType.FILE, "UtilityVM/Files/kernel2") in paths
    assert next(e for e in exported if e.path == "Hives/Software_Delta").data == b"regf-delta"


def test_link_to_a_missing_target(tmp_path: Path) -> None:
    base = tmp_path / "base"
    LayerDirectory(base).apply(tar_of([d("Files")]))
    layer = [d("Files"), LayerEntry(EntryType.LINK, "Files/x", link_target="Files/nowhere")]
    with pytest.raises(InvalidLayer, match="failed to find link target"):
        LayerDirectory(tmp_path / "child", [base]).apply(tar_of(layer))


def test_uvm_without_a_parent_uvm(tmp_path: Path) -> None:
    base = tmp_path / "base"
    LayerDirectory(base).apply(tar_of([d("Files")]))
    with pytest.raises(InvalidLayer, match="parent has none"):
        LayerDirectory(tmp_path / "child", [base]).apply(tar_of([d("UtilityVM")]))


def test_apply_never_writes_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = member("Files/escape", tarfile.SYMTYPE)
    link.linkname = str(outside)
    evil = member("Files/escape/pwned")
    with pytest.raises(InvalidLayer, match="through a symlink"):
        LayerDirectory(tmp_path / "l").apply(raw_tar((member("Files", tarfile.DIRTYPE), None), (link, None),
                                                     (evil, b"x")))
    assert list(outside.iterdir()) == []


def test_bad_tombstones_file(tmp_path: Path) -> None:
    (tmp_path / wl.TOMBSTONES_FILE).write_text("Version 2\n")
    with pytest.raises(InvalidLayer, match="invalid tombstones file"):
        LayerDirectory(tmp_path, [tmp_path / "p"]).read_tombstones()


# -- windows-layer mounts and the differ's rules ---------------------------------------------


def test_snapshot_mounts() -> None:
    assert wm.layer_mount("/s/1", [], Kind.ACTIVE) == Mount("windows-layer", "/s/1", ("rw",))
    view = wm.layer_mount("/s/3", ["/s/2", "/s/1"], Kind.VIEW)
    assert view == Mount("windows-layer", "/s/3", ("ro", 'parentLayerPaths=["/s/2","/s/1"]'))
    assert wm.parent_paths(view) == ["/s/2", "/s/1"]
    with pytest.raises(InvalidArgument):
        wm.parent_paths(Mount("windows-layer", "/s", ("parentLayerPaths=[1]",)))
    with pytest.raises(InvalidArgument):
        wm.parent_paths(Mount("windows-layer", "/s", ("parentLayerPaths=nope",)))


def test_mounts_to_layer_and_parents() -> None:
    active = wm.layer_mount("/s/3", ["/s/2", "/s/1"], Kind.ACTIVE)
    assert wm.mounts_to_layer_and_parents([active]) == ("/s/3", ["/s/2", "/s/1"])
    view = wm.layer_mount("/s/4", ["/s/2", "/s/1"], Kind.VIEW)
    assert wm.mounts_to_layer_and_parents([view]) == ("/s/2", ["/s/1"])  # the view stands for its parent
    assert wm.mounts_to_layer_and_parents([wm.layer_mount("/s/5", [], Kind.VIEW)]) == ("", [])
    with pytest.raises(InvalidArgument, match="should always be 1"):
        wm.mounts_to_layer_and_parents([active, active])
    with pytest.raises(Unimplemented, match="does not support layer type overlay"):
        wm.mounts_to_layer_and_parents([Mount("overlay", "overlay", ())])


def test_mount_pair_to_layer_stack() -> None:
    lower = [wm.layer_mount("/s/9", ["/s/2", "/s/1"], Kind.VIEW)]  # stands for /s/2 over /s/1
    upper = [wm.layer_mount("/s/3", ["/s/2", "/s/1"], Kind.ACTIVE)]
    assert wm.mount_pair_to_layer_stack(lower, upper) == ["/s/3", "/s/2", "/s/1"]
    empty = [wm.layer_mount("/s/8", [], Kind.VIEW)]
    first = [wm.layer_mount("/s/1", [], Kind.ACTIVE)]
    assert wm.mount_pair_to_layer_stack(empty, first) == ["/s/1"]
    cases = [
        (empty, upper, "with parents against a null layer"),
        (lower, first, "with no parents against another layer"),
        ([wm.layer_mount("/s/9", ["/s/7", "/s/1"], Kind.VIEW)], upper, "other than its own parent"),
        ([wm.layer_mount("/s/9", ["/s/2", "/s/6"], Kind.VIEW)], upper, "different parents"),
        ([Mount("bind", "/x", ())], upper, "non-windows-layer"),
        (lower, [Mount("bind", "/x", ())], "upper mount invalid"),
    ]
    for lo, up, message in cases:
        with pytest.raises((InvalidArgument, Unimplemented), match=message):
            wm.mount_pair_to_layer_stack(lo, up)


def test_requested_scratch_size() -> None:
    assert wm.requested_scratch_size({}) == 0
    assert wm.requested_scratch_size({wm.ROOTFS_SIZE_GB_LABEL: "20"}) == 20 << 30
    both = {wm.ROOTFS_SIZE_GB_LABEL: "20", wm.ROOTFS_SIZE_BYTES_LABEL: "4096"}
    assert wm.requested_scratch_size(both) == 4096  # the label in bytes wins
    with pytest.raises(InvalidArgument, match=r"rootfs\.sizebytes"):
        wm.requested_scratch_size({wm.ROOTFS_SIZE_BYTES_LABEL: "big"})


# -- the plugin ------------------------------------------------------------------------------


async def test_plugin_is_skipped_on_linux(tmp_path: Path) -> None:
    plugins = PluginSet()
    await plugins.init_all([windows.PLUGIN], configs=lambda r: None, root=tmp_path / "root",
                           state=tmp_path / "state", properties={})
    p = plugins.get("io.containerd.snapshotter.v1.windows")
    assert p.skipped and isinstance(p.error, SkipPlugin)
    assert str(p.error) == "windows snapshotter is unsupported on this platform"
    assert not (tmp_path / "root").exists()


async def test_introspection_shows_the_snapshotters(tmp_short: Path) -> None:
    """With the btrfs, devmapper and windows registrations, a daemon on a non-btrfs root
    without device-mapper (or a pool) reports each one skipped, with its reason."""
    regs = [*builtins.registrations(), btrfs.PLUGIN, devmapper.PLUGIN, windows.PLUGIN]
    async with Daemon(make_config(tmp_short), plugins=regs) as d, Client(d.address) as c:
        plugins = {p.id: p for p in await c.plugins(["type==io.containerd.snapshotter.v1"])}
        assert plugins["windows"].status == "skip"
        # reported as containerd wraps ErrSkipPlugin
        assert plugins["windows"].error == "windows snapshotter is unsupported on this platform: skip plugin"
        assert plugins["devmapper"].status == "skip"
        assert plugins["devmapper"].error in (f"{devmapper.SKIP_NO_KERNEL}: skip plugin",
                                              f"{devmapper.SKIP_NOT_CONFIGURED}: skip plugin")
        if btrfs.lookup_mount(tmp_short).fs_type != "btrfs":
            assert plugins["btrfs"].status == "skip"
            assert "must be a btrfs filesystem to be used with the btrfs snapshotter" in \
                plugins["btrfs"].error
