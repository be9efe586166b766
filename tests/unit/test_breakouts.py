"""Applying hostile layers never touches anything outside the root.

Every case of containerd's ``TestBreakouts`` (``pkg/archive/tar_test.go``),
with its name, its pre-existing tree, its archive and its check, plus cases
for the classes of past CVEs that aim at a real folder outside the root
(absolute and relative symlink escapes, writes through symlinks and hard
links, hard links to outside files, chmod/chown/xattrs/times through
symlinks, whiteouts and opaque markers through symlinked parents, ``..``
names, symlink loops).

Each case applies into ``<tmp>/root`` next to ``<tmp>/outside``, a folder
of sentinel files; the whole of ``<tmp>`` except ``root`` (and a few host
paths the containerd cases name, like ``/etc/passwd``) is snapshotted
before and after and must not change, whether the apply succeeds or fails.

As root, each apply runs in a forked child chrooted into ``<tmp>`` (in a
private mount namespace with its own ``/proc``), so the layers' absolute
targets (``/etc``, ``/outside``) land in ``<tmp>`` where the snapshot sees
them — and a regressed extractor cannot damage the host running the tests.
Without root the apply runs in-process (it cannot write the host's ``/etc``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import encodings.ascii  # noqa: F401 - imported before any chroot
import hashlib
import io
import os
import pickle
import stat
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import aiocontainerd.mount.mounting  # noqa: F401 - imported before any chroot
from aiocontainerd.diff.apply import apply_layer, root_path
from aiocontainerd.errors import ContainerdError, InvalidArgument

# -- a tar builder (containerd's tartest.TarContext) -------------------------------------------------


@dataclasses.dataclass
class Tar:
    """Builds a tar in memory, entries in the order added; uid/gid/mtime as given."""

    uid: int = dataclasses.field(default_factory=os.getuid)
    gid: int = dataclasses.field(default_factory=os.getgid)
    mtime: float = dataclasses.field(default_factory=time.time)
    entries: list[tuple[tarfile.TarInfo, bytes]] = dataclasses.field(default_factory=list)
    fmt: int = tarfile.PAX_FORMAT

    def _info(self, name: str, type_: bytes, mode: int, **kw: Any) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type = type_
        ti.mode = mode
        ti.uid, ti.gid = kw.pop("uid", self.uid), kw.pop("gid", self.gid)
        ti.mtime = kw.pop("mtime", int(self.mtime))
        ti.uname = ti.gname = ""
        xattrs = kw.pop("xattrs", None)
        pax = kw.pop("pax", None) or {}
        if xattrs:
            for k, v in xattrs.items():
                raw = v if isinstance(v, bytes) else v.encode()
                pax["SCHILY.xattr." + k] = raw.decode("utf-8", "surrogateescape")
        if pax:
            ti.pax_headers = pax
        for k, v in kw.items():
            setattr(ti, k, v)
        return ti

    def dir(self, name: str, mode: int = 0o755, **kw: Any) -> Tar:
        self.entries.append((self._info(name, tarfile.DIRTYPE, mode, **kw), b""))
        return self

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, **kw: Any) -> Tar:
        ti = self._info(name, tarfile.REGTYPE, mode, **kw)
        ti.size = len(data)
        self.entries.append((ti, data))
        return self

    def symlink(self, target: str, name: str, **kw: Any) -> Tar:
        self.entries.append((self._info(name, tarfile.SYMTYPE, kw.pop("mode", 0o777),
                                        linkname=target, **kw), b""))
        return self

    def link(self, target: str, name: str, **kw: Any) -> Tar:
        self.entries.append((self._info(name, tarfile.LNKTYPE, kw.pop("mode", 0o644),
                                        linkname=target, **kw), b""))
        return self

    def device(self, name: str, kind: bytes, major: int, minor: int, mode: int = 0o600, **kw: Any) -> Tar:
        self.entries.append((self._info(name, kind, mode, devmajor=major, devminor=minor, **kw), b""))
        return self

    def fifo(self, name: str, mode: int = 0o600, **kw: Any) -> Tar:
        self.entries.append((self._info(name, tarfile.FIFOTYPE, mode, **kw), b""))
        return self

    def bytes(self) -> bytes:
        out = io.BytesIO()
        for ti, data in self.entries:
            out.write(ti.tobuf(self.fmt, "utf-8", "surrogateescape"))
            if data:
                out.write(data)
                out.write(b"\0" * (-len(data) % tarfile.BLOCKSIZE))
        out.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        return out.getvalue()


def apply_bytes(data: bytes, root: Path, **kw: Any) -> tuple[str, int]:
    return apply_layer(io.BytesIO(data), root, **kw)


_CLONE_NEWNS = 0x00020000
_MS_REC, _MS_PRIVATE = 0x4000, 1 << 18


def sandbox_available() -> bool:
    return os.geteuid() == 0 and hasattr(os, "fork")


def apply_in_sandbox(data: bytes, top: Path, root_in_top: str, **kw: Any) -> tuple[str, int]:
    """Apply in a forked child chrooted into ``top`` (own mount namespace and /proc);
    re-raises the child's ContainerdError/InvalidArgument in the parent."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 1
        try:
            os.close(r)
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            private = _MS_REC | _MS_PRIVATE
            # a /proc inside the chroot (for the xattr paths) where the kernel lets us make
            # one in a private mount namespace; without it the apply uses its no-/proc path
            if libc.unshare(_CLONE_NEWNS) == 0 and libc.mount(None, b"/", None, private, None) == 0:
                (top / "proc").mkdir(exist_ok=True)
                if libc.mount(b"proc", os.fsencode(top / "proc"), b"proc", 0, None) != 0:
                    (top / "proc").rmdir()
            os.chroot(top)
            os.chdir("/")
            try:
                result: Any = ("ok", apply_layer(io.BytesIO(data), root_in_top, **kw))
            except ContainerdError as e:
                result = ("error", type(e).__name__, e.message)
            with os.fdopen(w, "wb") as out:
                out.write(pickle.dumps(result))
            code = 0
        except BaseException as e:  # report anything else too
            try:
                with os.fdopen(w, "wb") as out:
                    out.write(pickle.dumps(("crash", repr(e))))
            except BaseException:
                pass
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    os.waitpid(pid, 0)
    if (top / "proc").is_dir():
        (top / "proc").rmdir()
    result = pickle.loads(raw) if raw else ("crash", "no result")
    if result[0] == "ok":
        return result[1]
    if result[0] == "error":
        cls = InvalidArgument if result[1] == "InvalidArgument" else ContainerdError
        raise cls(result[2])
    raise AssertionError(f"sandboxed apply failed: {result[1]}")


# -- snapshots of what must not change --------------------------------------------------------------

def _describe(path: str) -> tuple[Any, ...]:
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    body: Any = None
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            body = hashlib.sha256(f.read()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        body = os.readlink(path)
    try:
        xattrs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False))
                              for k in os.listxattr(path, follow_symlinks=False)))
    except OSError:
        xattrs = ()
    times = st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else None
    return (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_nlink, st.st_size, times,
            st.st_rdev, body, xattrs)


def snapshot(top: Path, skip: Path | None = None) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``top`` (except ``skip``'s subtree), described without following links."""
    out = {".": _describe(str(top))[:2]}
    for dirpath, dirnames, filenames in os.walk(top):
        if skip is not None and Path(dirpath) == skip.parent and skip.name in dirnames:
            dirnames.remove(skip.name)
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, top)] = _describe(p)
    return out


HOST_PATHS = ["/etc/passwd", "/etc/unbroken", "/etc/emptied", "/etc/whitedout", "/dne", "/upandout",
              "/downandout", "/breakout", "/localetc", "/tmp/tmp"]


def host_snapshot(extra: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in HOST_PATHS + extra:
        try:
            out[p] = _describe(p)
        except FileNotFoundError:
            out[p] = None
    return out


@dataclasses.dataclass
class Env:
    """The layout of one case: ``<tmp>/root`` is applied to, ``<tmp>/outside`` must not change."""

    tmp: Path
    root: Path
    outside: Path


@pytest.fixture
def env(tmp_path: Path) -> Env:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "passwd").write_text("outside passwd")
    (outside / "secret").write_text("outside secret")
    (outside / "secret").chmod(0o600)
    (outside / "dir").mkdir()
    (outside / "dir" / "keep").write_text("keep me")
    (outside / "target").symlink_to("secret")
    return Env(tmp_path, root, outside)


# -- checks (containerd's validators) ---------------------------------------------------------------

Check = Callable[[Env], None]


def same_file(f1: str, f2: str) -> Check:
    def check(e: Env) -> None:
        s1, s2 = os.stat(root_path(e.root, f1)), os.stat(root_path(e.root, f2))
        assert (s1.st_dev, s1.st_ino) == (s2.st_dev, s2.st_ino), f"{f1} and {f2}: files differ"
    return check


def not_same_file(f1: str, f2: str) -> Check:
    def check(e: Env) -> None:
        s1, s2 = os.stat(root_path(e.root, f1)), os.stat(root_path(e.root, f2))
        assert (s1.st_dev, s1.st_ino) != (s2.st_dev, s2.st_ino), f"{f1} and {f2} are the same file"
    return check


def is_symlink(f: str) -> Check:
    def check(e: Env) -> None:
        assert os.path.islink(e.root / f.lstrip("/")), f"{f} should be a symlink"
    return check


def same_symlink(f1: str, f2: str) -> Check:
    def check(e: Env) -> None:
        is_symlink(f1)(e)
        is_symlink(f2)(e)
        assert os.readlink(e.root / f1.lstrip("/")) == os.readlink(e.root / f2.lstrip("/"))
    return check


def file_value(f: str, content: bytes) -> Check:
    def check(e: Env) -> None:
        assert (e.root / f).read_bytes() == content
    return check


def not_exists(f: str) -> Check:
    def check(e: Env) -> None:
        assert not os.path.lexists(e.root / f), f"{f} exists"
    return check


def all_of(*checks: Check) -> Check:
    def check(e: Env) -> None:
        for c in checks:
            c(e)
    return check


UNBROKEN = b"unbroken"
unbroken_check = file_value("etc/unbroken", UNBROKEN)


def emptied_check(e: Env) -> None:
    assert (e.root / "etc" / "emptied").read_bytes() == b"", "/etc/emptied: non-empty"


# -- pre-existing trees (fstest appliers) ----------------------------------------------------------

Setup = Callable[[Env], None]


def etc_passwd(content: bytes = b"inside") -> Setup:
    def setup(e: Env) -> None:
        (e.root / "etc").mkdir(mode=0o755)
        (e.root / "etc" / "passwd").write_bytes(content)
    return setup


def chain(*steps: Setup) -> Setup:
    def setup(e: Env) -> None:
        for s in steps:
            s(e)
    return setup


def mkdir(p: str, mode: int = 0o755) -> Setup:
    return lambda e: (e.root / p).mkdir(mode=mode)


def write(p: str, content: bytes) -> Setup:
    return lambda e: (e.root / p).write_bytes(content)


def symlink(target: str, p: str) -> Setup:
    return lambda e: os.symlink(target, e.root / p)


def hardlink(src: str, p: str) -> Setup:
    # fstest.Link: os.Link follows the parents of both paths as the OS does
    return lambda e: os.link(e.root / src, e.root / p)


@dataclasses.dataclass
class Case:
    name: str
    tar: Callable[[Env], Tar]
    check: Check | None = None
    setup: Setup | None = None
    error: type[Exception] | None = None
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def tc() -> Tar:
    return Tar()


TNAME = "aiocontainerd-breakout-test"

CONTAINERD_CASES = [
    Case("SymlinkAbsolute",
         lambda e: tc().dir("etc").symlink("/etc", "localetc").file("/localetc/unbroken", UNBROKEN),
         unbroken_check),
    Case("SymlinkUpAndOut",
         lambda e: tc().dir("etc").dir("dummy").symlink("/dummy/../etc", "localetc")
         .file("/localetc/unbroken", UNBROKEN),
         unbroken_check),
    Case("SymlinkMultipleAbsolute",
         lambda e: tc().dir("etc").dir("dummy").symlink("/etc", "/dummy/etc")
         .symlink("/dummy/etc", "localetc").file("/dummy/etc/unbroken", UNBROKEN),
         unbroken_check),
    Case("SymlinkMultipleRelative",
         lambda e: tc().dir("etc").dir("dummy").symlink("/etc", "/dummy/etc")
         .symlink("./dummy/etc", "localetc").file("/dummy/etc/unbroken", UNBROKEN),
         unbroken_check),
    Case("SymlinkEmptyFile",
         lambda e: tc().dir("etc").file("etc/emptied", b"notempty").symlink("/etc", "localetc")
         .file("/localetc/emptied", b""),
         emptied_check),
    Case("HardlinkRelative",
         lambda e: tc().dir("etc", 0o770).file("/etc/passwd", b"inside").dir("breakouts")
         .symlink("../../etc", "breakouts/d1").link("/breakouts/d1/passwd", "breakouts/mypasswd"),
         same_file("/breakouts/mypasswd", "/etc/passwd")),
    Case("HardlinkDownAndOut",
         lambda e: tc().dir("etc", 0o770).file("/etc/passwd", b"inside").dir("breakouts")
         .dir("downandout").symlink("../downandout/../../etc", "breakouts/d1")
         .link("/breakouts/d1/passwd", "breakouts/mypasswd"),
         same_file("/breakouts/mypasswd", "/etc/passwd")),
    Case("HardlinkAbsolute",
         lambda e: tc().dir("etc", 0o770).file("/etc/passwd", b"inside").symlink("/etc", "localetc")
         .link("/localetc/passwd", "localpasswd"),
         same_file("localpasswd", "/etc/passwd")),
    Case("HardlinkRelativeLong",
         lambda e: tc().dir("etc", 0o770).file("/etc/passwd", b"inside")
         .symlink("../../../../../../../etc", "localetc").link("/localetc/passwd", "localpasswd"),
         same_file("localpasswd", "/etc/passwd")),
    Case("HardlinkRelativeUpAndOut",
         lambda e: tc().dir("etc", 0o770).file("/etc/passwd", b"inside")
         .symlink("upandout/../../../etc", "localetc").link("/localetc/passwd", "localpasswd"),
         same_file("localpasswd", "/etc/passwd")),
    Case("HardlinkDirectRelative",
         lambda e: tc().dir("etc", 0o770).file("/etc/passwd", b"inside")
         .link("../../../../../etc/passwd", "localpasswd"),
         same_file("localpasswd", "/etc/passwd")),
    Case("HardlinkDirectAbsolute",
         lambda e: tc().dir("etc", 0o770).file("/etc/passwd", b"inside").link("/etc/passwd", "localpasswd"),
         same_file("localpasswd", "/etc/passwd")),
    Case("SymlinkParentDirectory",
         lambda e: tc().dir("etc", 0o770).file("/etc/passwd", b"inside").symlink("/etc/", "..")
         .link("/etc/passwd", "localpasswd"),
         same_file("/localpasswd", "/etc/passwd")),
    Case("SymlinkEmptyFilename",
         lambda e: tc().dir("etc", 0o770).file("/etc/passwd", b"inside").symlink("/etc/", "")
         .link("/etc/passwd", "localpasswd"),
         same_file("/localpasswd", "/etc/passwd")),
    Case("SymlinkParentRelative",
         lambda e: tc().dir("etc", 0o770).file("/etc/passwd", b"inside").symlink("/etc/", "localetc/sub/..")
         .link("/etc/passwd", "/localetc/localpasswd"),
         same_file("/localetc/localpasswd", "/etc/passwd")),
    Case("SymlinkSlashEnded",
         lambda e: tc().dir("etc", 0o770).file("/etc/passwd", b"inside").dir("localetc/", 0o770)
         .link("/etc/passwd", "/localetc/localpasswd"),
         same_file("/localetc/localpasswd", "/etc/passwd")),
    Case("SymlinkOverrideDirectory",
         lambda e: tc().symlink("/etc", "localetc").link("/etc/passwd", "/localetc/localpasswd"),
         same_file("/localetc/localpasswd", "/etc/passwd"),
         setup=chain(etc_passwd(), mkdir("localetc"))),
    Case("SymlinkOverrideDirectoryRelative",
         lambda e: tc().symlink("../../etc", "localetc").link("/etc/passwd", "/localetc/localpasswd"),
         same_file("/localetc/localpasswd", "/etc/passwd"),
         setup=chain(etc_passwd(), mkdir("localetc"))),
    Case("DirectoryOverrideSymlink",
         lambda e: tc().dir("/localetc/").link("/etc/passwd", "/localetc/localpasswd"),
         same_file("/localetc/localpasswd", "/etc/passwd"),
         setup=chain(etc_passwd(), symlink("/etc", "localetc"))),
    Case("DirectoryOverrideSymlinkAndHardlink",
         lambda e: tc().dir("/localetc/").file("/localetc/localpasswd", b"different"),
         not_same_file("/localetc/localpasswd", "/etc/passwd"),
         setup=chain(etc_passwd(), symlink("etc", "localetc"),
                     hardlink("etc/passwd", "localetc/localpasswd"))),
    Case("WhiteoutRootParent", lambda e: tc().file(".wh...", b""),
         setup=etc_passwd(), error=InvalidArgument),
    Case("WhiteoutParent", lambda e: tc().file("etc/.wh...", b""),
         setup=etc_passwd(), error=InvalidArgument),
    Case("WhiteoutRoot", lambda e: tc().file(".wh..", b""),
         setup=etc_passwd(), error=InvalidArgument),
    Case("WhiteoutCurrentDirectory", lambda e: tc().file("etc/.wh..", b""),
         setup=etc_passwd(), error=InvalidArgument),
    Case("WhiteoutSymlink", lambda e: tc().file(".wh.localetc", b""),
         all_of(file_value("etc/passwd", b"all users"), not_exists("localetc")),
         setup=chain(etc_passwd(b"all users"), symlink("/etc", "localetc"))),
    Case("WhiteoutSymlinkPath", lambda e: tc().file("localetc/.wh.whitedout", b""),
         all_of(file_value("etc/passwd", b"all users"), not_exists("etc/whitedout")),
         setup=chain(etc_passwd(b"all users"), write("etc/whitedout", b"ahhhh whiteout"),
                     symlink("/etc", "localetc"))),
    Case("WhiteoutDirectoryName", lambda e: tc().file(".wh.etc/somefile", b"non-empty"),
         all_of(file_value("etc/passwd", b"all users"), file_value(".wh.etc/somefile", b"non-empty")),
         setup=chain(etc_passwd(b"all users"), write("etc/whitedout", b"ahhhh whiteout"),
                     symlink("/etc", "localetc"))),
    Case("WhiteoutDeadSymlinkParent", lambda e: tc().file("localetc/.wh.etc", b""),
         file_value("etc/passwd", b"all users"),
         setup=chain(etc_passwd(b"all users"), symlink("/dne", "localetc"))),
    Case("WhiteoutRelativePath", lambda e: tc().file("dne/../.wh.etc", b""),
         not_exists("etc/passwd"),
         setup=chain(etc_passwd(b"all users"), symlink("/dne", "localetc"))),
    Case("SymlinkOverridePath",
         lambda e: tc().dir("foo").dir("foo/tmp").file(f"foo/tmp/breakout-{TNAME}", b"\0\1\2")
         .symlink("/", "foo").file(f"foo/tmp/breakout-{TNAME}", b"\3\4\5")
         .dir("foo").dir("foo/tmp").file(f"foo/tmp/breakout-{TNAME}", b"\6\7\x08"),
         all_of(file_value(f"foo/tmp/breakout-{TNAME}", b"\6\7\x08"),
                file_value(f"tmp/breakout-{TNAME}", b"\3\4\5"))),
    Case("HardlinkSymlinkBeforeCreateTarget",
         lambda e: tc().dir("etc", 0o770).symlink("/etc/passwd", "localpasswd")
         .link("localpasswd", "localpasswd-dup").file("/etc/passwd", b"after"),
         same_file("localpasswd-dup", "/etc/passwd")),
    Case("HardlinkSymlinkRelative",
         lambda e: tc().dir("etc", 0o770).file("/etc/passwd", b"inside")
         .symlink("../../../../../etc/passwd", "passwdlink").link("/passwdlink", "localpasswd"),
         all_of(same_symlink("/localpasswd", "/passwdlink"), same_file("/localpasswd", "/etc/passwd"))),
    Case("HardlinkSymlinkAbsolute",
         lambda e: tc().dir("etc", 0o770).file("/etc/passwd", b"inside")
         .symlink("/etc/passwd", "passwdlink").link("/passwdlink", "localpasswd"),
         all_of(same_symlink("/localpasswd", "/passwdlink"), same_file("/localpasswd", "/etc/passwd"))),
    # containerd writes perm400 and also-exists-outside-root into the test's own temp dir
    Case("HardlinkSymlinkChmod",
         lambda e: tc().symlink(_rel(e, "perm400"), _rel(e, "also-exists-outside-root"))
         .link(_rel(e, "also-exists-outside-root"), "sketchylink"),
         lambda e: None,
         setup=lambda e: ((e.outside / "perm400").write_bytes(b"..."), (e.outside / "perm400").chmod(0o400),
                          (e.outside / "also-exists-outside-root").write_bytes(b"..."),
                          (e.outside / "also-exists-outside-root").chmod(0o640))),
]


def _rel(e: Env, *parts: str) -> str:
    """The absolute path of ``<outside>/parts`` as the apply sees it (what a hostile layer
    aims at): ``/outside/...`` in the sandbox, the real path without it."""
    base = Path("/outside") if sandbox_available() else e.outside
    return str(base.joinpath(*parts))


def _up(e: Env, *parts: str) -> str:
    """A relative symlink target climbing far above the root, then down to ``<outside>/parts``."""
    return "../" * 30 + _rel(e, *parts).lstrip("/")


def _exists_in_root(*parts_fn: Callable[[Env], str]) -> Check:
    def check(e: Env) -> None:
        for fn in parts_fn:
            assert os.path.lexists(e.root / fn(e).lstrip("/"))
    return check


CVE_CASES = [
    Case("AbsoluteSymlinkToOutsideThenWrite",
         lambda e: tc().symlink(_rel(e), "esc").file("esc/pwned", b"x").file("esc/secret", b"x"),
         _exists_in_root(lambda e: _rel(e, "pwned"))),
    Case("RelativeSymlinkToOutsideThenWrite",
         lambda e: tc().dir("a").symlink(_up(e), "a/esc").file("a/esc/pwned", b"x"),
         _exists_in_root(lambda e: _rel(e, "pwned"))),
    Case("SymlinkChainToOutsideThenWrite",
         lambda e: tc().symlink(_rel(e), "one").symlink("one/etc", "two").symlink("../two", "d/three")
         .file("d/three/passwd", b"overwritten"),
         _exists_in_root(lambda e: _rel(e, "etc", "passwd"))),
    Case("ParentSymlinkWithDotDotToOutside",
         lambda e: tc().symlink("/", "top").file("top/../../../outside/secret", b"x"),
         file_value("outside/secret", b"x")),
    Case("WriteThroughFinalSymlink",
         lambda e: tc().symlink(_rel(e, "secret"), "f").file("f", b"replaced"),
         file_value("f", b"replaced")),
    Case("WriteThroughPreexistingFinalSymlink",
         lambda e: tc().file("f", b"replaced", mode=0o4777, uid=1000, gid=1000),
         file_value("f", b"replaced"),
         setup=lambda e: os.symlink(_rel(e, "secret"), e.root / "f")),
    Case("DirectoryOverSymlinkToOutside",
         lambda e: tc().symlink(_rel(e, "dir"), "d").dir("d", 0o777, uid=1000).file("d/keep", b"x"),
         file_value("d/keep", b"x")),
    Case("WriteThroughHardlinkReplacesIt",
         lambda e: tc().dir("etc").file("etc/passwd", b"inside").link("etc/passwd", "hl")
         .file("hl", b"written"),
         all_of(file_value("etc/passwd", b"inside"), file_value("hl", b"written"))),
    Case("HardlinkToAbsoluteOutsidePath",
         lambda e: tc().link(_rel(e, "secret"), "hl"), error=ContainerdError),
    Case("HardlinkToRelativeOutsidePath",
         lambda e: tc().link(_up(e, "secret"), "hl"), error=ContainerdError),
    Case("HardlinkThroughSymlinkToOutside",
         lambda e: tc().symlink(_rel(e), "esc").link("esc/secret", "hl"), error=ContainerdError),
    Case("HardlinkToRoot", lambda e: tc().link("/", "hl"), error=InvalidArgument),
    Case("HardlinkToRootViaDotDot", lambda e: tc().link("../..", "hl"), error=InvalidArgument),
    Case("HardlinkToDirectory", lambda e: tc().dir("etc").link("etc", "hl"), error=ContainerdError),
    Case("ChmodChownThroughHardlinkedSymlink",
         lambda e: tc().symlink(_rel(e, "secret"), "s", uid=1000, gid=1000)
         .link("s", "s2", mode=0o6777, uid=1234, gid=1234),
         same_symlink("s", "s2")),
    Case("TimesAndXattrsThroughSymlink",
         lambda e: tc().symlink(_rel(e, "secret"), "s", mtime=12345,
                                xattrs={"user.evil": "x", "security.evil": "x"}),
         is_symlink("s")),
    Case("TrustedOverlayXattrsRefused",
         lambda e: tc().dir("d", xattrs={"trusted.overlay.opaque": "y", "user.overlay.redirect": "/x"}),
         lambda e: (os.listxattr(e.root / "d") == []) or pytest.fail("xattrs set")),
    Case("WhiteoutThroughSymlinkedParentToOutside",
         lambda e: tc().symlink(_rel(e), "esc").file("esc/.wh.secret", b"").file("esc/dir/.wh.keep", b""),
         lambda e: None),
    Case("WhiteoutOfOutsideViaDotDot",
         lambda e: tc().file("../outside/.wh.secret", b"").file("../../.wh.outside", b""),
         lambda e: None),
    Case("OpaqueThroughSymlinkedParentToOutside",
         lambda e: tc().symlink(_rel(e), "esc").file("esc/.wh..wh..opq", b"")
         .symlink(_up(e, "dir"), "esc2").file("esc2/.wh..wh..opq", b""),
         lambda e: None),
    Case("OverlayWhiteoutThroughSymlinkedParent",
         lambda e: tc().symlink(_rel(e), "esc").file("esc/.wh.secret", b"").file("esc/dir/.wh..wh..opq", b""),
         lambda e: stat.S_ISCHR(os.lstat(e.root / _rel(e, "secret").lstrip("/")).st_mode) or pytest.fail(),
         kwargs={"whiteouts": "overlay"}),
    Case("DotDotNames",
         lambda e: tc().file("../../pwned", b"a").file("a/../../../pwned2", b"b").dir("../")
         .file("./../outside/secret", b"c"),
         all_of(file_value("pwned", b"a"), file_value("pwned2", b"b"), file_value("outside/secret", b"c"))),
    Case("SymlinkLoop",
         lambda e: tc().symlink("b", "a").symlink("a", "b").file("a/x", b"x"), error=ContainerdError),
    Case("FileUnderRegularFile",
         lambda e: tc().file("f", b"x").file("f/x", b"x"), error=ContainerdError),
    Case("DeviceNumbersOutOfRange",
         lambda e: dataclasses.replace(tc(), fmt=tarfile.GNU_FORMAT)
         .device("dev", tarfile.CHRTYPE, 1 << 32, 1),
         error=InvalidArgument),
]


@pytest.mark.parametrize("case", CONTAINERD_CASES + CVE_CASES, ids=lambda c: c.name)
def test_breakout(env: Env, case: Case) -> None:
    if os.geteuid() != 0 and case.name in ("DeviceNumbersOutOfRange", "ChmodChownThroughHardlinkedSymlink",
                                            "WriteThroughPreexistingFinalSymlink",
                                            "DirectoryOverSymlinkToOutside",
                                            "OverlayWhiteoutThroughSymlinkedParent"):
        pytest.skip("needs root (devices, other owners)")
    if case.setup is not None:
        case.setup(env)
    data = case.tar(env).bytes()
    host_extra = [f"/tmp/breakout-{TNAME}", str(Path("/") / "pwned"), "/pwned2"]
    before, before_host = snapshot(env.tmp, skip=env.root), host_snapshot(host_extra)
    def run() -> tuple[str, int]:
        if sandbox_available():
            return apply_in_sandbox(data, env.tmp, "/" + env.root.name, **case.kwargs)
        return apply_bytes(data, env.root, **case.kwargs)

    if case.error is not None:
        with pytest.raises(case.error):
            run()
    else:
        run()
    assert snapshot(env.tmp, skip=env.root) == before, "something outside the root changed"
    assert host_snapshot(host_extra) == before_host, "a host path changed"
    if case.check is not None and case.error is None:
        case.check(env)


def test_outside_snapshot_sees_changes(env: Env) -> None:
    """The snapshot would notice what a breakout does (content, mode, links, xattrs, new files)."""
    before = snapshot(env.tmp, skip=env.root)
    for change in (lambda: (env.outside / "secret").write_text("changed"),
                   lambda: (env.outside / "dir" / "keep").chmod(0o777),
                   lambda: os.link(env.outside / "secret", env.tmp / "hl"),
                   lambda: os.setxattr(env.outside / "secret", "user.x", b"1"),
                   lambda: (env.tmp / "new").write_text("x")):
        change()
        assert snapshot(env.tmp, skip=env.root) != before
        before = snapshot(env.tmp, skip=env.root)


def test_invalid_whiteout_errors_name_the_archive(env: Env) -> None:
    with pytest.raises(InvalidArgument, match="invalid whiteout name"):
        apply_bytes(tc().file("etc/.wh..", b"").bytes(), env.root)
