"""The OCI spec generator: containerd's defaults and its SpecOpts rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiocontainerd import oci
from aiocontainerd.errors import FailedPrecondition, InvalidArgument, NotFound
from aiocontainerd.mount import Mount


def test_default_spec_is_containerds() -> None:
    s = oci.generate_spec("ns1", "c1")
    assert s["ociVersion"] == "1.0.2-dev"
    assert s["root"] == {"path": "rootfs"}
    p = s["process"]
    assert p["cwd"] == "/" and p["user"] == {"uid": 0, "gid": 0} and p["noNewPrivileges"] is True
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert p["capabilities"]["bounding"] == p["capabilities"]["permitted"] == p["capabilities"]["effective"]
    assert len(p["capabilities"]["bounding"]) == 14 and "CAP_SYS_ADMIN" not in p["capabilities"]["bounding"]
    assert [m["destination"] for m in s["mounts"]] == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue",
                                                       "/sys", "/run"]
    assert s["mounts"][2]["options"] == ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                                         "gid=5"]
    linux = s["linux"]
    assert [n["type"] for n in linux["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    assert linux["cgroupsPath"] == "/ns1/c1"
    assert linux["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    with pytest.raises(InvalidArgument):
        oci.default_spec("", "c1")


def test_any_round_trip() -> None:
    s = oci.generate_spec("default", "c1", oci.with_process_args("true"))
    value = oci.to_any(s)
    assert value.type_url == "types.containerd.io/opencontainers/runtime-spec/1/Spec"
    assert json.loads(value.value) == s
    assert oci.from_any(value) == s


def test_env_merge_rules() -> None:
    assert oci.replace_or_append_env(["A=1", "B=2", "C=3"], ["B=x", "D=4", "C"]) == ["A=1", "B=x", "D=4"]
    config = {"config": {"Env": ["PATH=/bin", "A=1"], "Entrypoint": ["/ep"], "Cmd": ["run", "x"],
                         "WorkingDir": "/w"}}
    s = oci.generate_spec("default", "c", oci.with_env(["A=2", "B=3"]), oci.with_image_config(config),
                          rootfs=_fake_rootfs_none())
    assert s["process"]["env"] == ["PATH=/bin", "A=2", "B=3"]
    assert s["process"]["args"] == ["/ep", "run", "x"]
    assert s["process"]["cwd"] == "/w"
    # no Env in the image: the default PATH; args replace Cmd but keep the entrypoint
    s = oci.generate_spec("default", "c", oci.with_image_config({"config": {"Entrypoint": ["/ep"],
                                                                            "Cmd": ["a"]}}, args=["b"]))
    assert s["process"]["env"] == list(oci.DEFAULT_ENV) and s["process"]["args"] == ["/ep", "b"]
    assert s["process"]["cwd"] == "/"
    # ctr run's ARGS replace everything (entrypoint too)
    s = oci.generate_spec("default", "c", oci.with_image_config(config), oci.with_process_args("sh"))
    assert s["process"]["args"] == ["sh"]
    s = oci.generate_spec("default", "c", oci.with_tty)
    assert s["process"]["terminal"] is True and s["process"]["env"] == ["TERM=xterm"]


def _fake_rootfs_none() -> oci.RootFS | None:
    return None


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"
                                "# comment\nnobody:x:65534:65534::/:/bin/false\n")
    (etc / "group").write_text("root:x:0:\napp:x:1001:app\nstaff:x:50:app,other\nwheel:x:10:root\n")
    return tmp_path


@pytest.mark.parametrize(("user", "uid", "gid", "extra"), [
    ("app", 1000, 1001, [1001, 50]),        # name: passwd gives both, supplementary from group
    ("1000", 1000, 1001, [1001, 50]),       # uid: gid from passwd
    ("4242", 4242, 0, [0]),                 # unknown uid: gid 0
    ("app:staff", 1000, 50, [50]),
    ("1000:7", 1000, 7, [7, 50]),
    ("nobody:app", 65534, 1001, [1001]),
])
def test_user_from_rootfs(rootfs: Path, user: str, uid: int, gid: int, extra: list[int]) -> None:
    config = {"config": {"User": user}}
    s = oci.generate_spec("default", "c", oci.with_image_config(config), rootfs=oci.DirRootFS(rootfs))
    u = s["process"]["user"]
    assert (u["uid"], u["gid"]) == (uid, gid)
    assert sorted(u["additionalGids"]) == sorted(extra)


def test_user_errors(rootfs: Path) -> None:
    with pytest.raises(NotFound):
        oci.generate_spec("default", "c", oci.with_user("ghost"), rootfs=oci.DirRootFS(rootfs))
    with pytest.raises(NotFound):
        oci.generate_spec("default", "c", oci.with_user("app:ghosts"), rootfs=oci.DirRootFS(rootfs))
    with pytest.raises(InvalidArgument):
        oci.generate_spec("default", "c", oci.with_user("a:b:c"), rootfs=oci.DirRootFS(rootfs))
    with pytest.raises(InvalidArgument):
        oci.generate_spec("default", "c", oci.with_user("99999999999"), rootfs=oci.DirRootFS(rootfs))
    with pytest.raises(FailedPrecondition):  # a name needs a root filesystem
        oci.generate_spec("default", "c", oci.with_user("app"))
    s = oci.generate_spec("default", "c", oci.with_user("5:6"))  # numbers need none
    assert s["process"]["user"]["uid"] == 5 and s["process"]["user"]["gid"] == 6


def test_image_without_user_reads_roots_groups(rootfs: Path) -> None:
    s = oci.generate_spec("default", "c", oci.with_image_config({"config": {}}), rootfs=oci.DirRootFS(rootfs))
    assert s["process"]["user"] == {"uid": 0, "gid": 0, "additionalGids": [0, 10]}


def test_symlinked_passwd_stays_inside_root(tmp_path: Path, rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").rename(rootfs / "etc" / "real-passwd")
    (rootfs / "etc" / "passwd").symlink_to("/etc/real-passwd")  # absolute: resolved in the root
    s = oci.generate_spec("default", "c", oci.with_user("app"), rootfs=oci.DirRootFS(rootfs))
    assert s["process"]["user"]["uid"] == 1000


def test_layered_rootfs_whiteouts(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "etc").mkdir(parents=True)
    (upper / "etc").mkdir(parents=True)
    (lower / "etc" / "passwd").write_text("old:x:1:1::/:/bin/sh\n")
    (lower / "etc" / "group").write_text("g:x:5:old\n")
    (upper / "etc" / "passwd").write_text("new:x:2:2::/:/bin/sh\n")
    fs = oci.from_mounts([Mount("overlay", "overlay", (f"lowerdir={lower}", f"upperdir={upper}",
                                                       "workdir=/x"))])
    assert isinstance(fs, oci.LayeredRootFS)
    assert fs.read("/etc/passwd") == b"new:x:2:2::/:/bin/sh\n"
    assert fs.read("/etc/group") == b"g:x:5:old\n"
    assert fs.read("/etc/shadow") is None
    assert isinstance(oci.from_mounts([Mount("bind", str(lower), ("rbind", "ro"))]), oci.DirRootFS)
    assert oci.from_mounts([Mount("ext4", "/dev/sda1")]) is None


def test_mount_flags() -> None:
    m = oci.parse_mount("type=bind,src=/h,dst=/c,options=rbind:ro")
    assert m == {"destination": "/c", "type": "bind", "source": "/h", "options": ["rbind", "ro"]}
    assert oci.parse_mount("type=tmpfs,destination=/t,source=tmpfs")["destination"] == "/t"
    for bad in ("type", "type=bind,color=red"):
        with pytest.raises(InvalidArgument):
            oci.parse_mount(bad)
    s = oci.generate_spec("default", "c", oci.with_mounts(["type=bind,src=/h,dst=/c,options=rbind:ro"]),
                          oci.without_mounts("/run"))
    assert s["mounts"][-1]["destination"] == "/c" and all(m["destination"] != "/run" for m in s["mounts"])


def test_namespaces_devices_privileged() -> None:
    s = oci.generate_spec("default", "c", oci.with_host_namespace("network"),
                          oci.with_linux_namespace("ipc", "/proc/1/ns/ipc"), oci.with_default_unix_devices,
                          oci.with_hostname("box"))
    assert [n["type"] for n in s["linux"]["namespaces"]] == ["pid", "ipc", "uts", "mount"]
    assert s["linux"]["namespaces"][1] == {"type": "ipc", "path": "/proc/1/ns/ipc"}
    devices = s["linux"]["resources"]["devices"]
    assert devices[0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in devices
    assert {"allow": True, "type": "c", "major": 136, "access": "rwm"} in devices
    assert s["hostname"] == "box"
    s = oci.generate_spec("default", "c", oci.with_privileged)
    assert "CAP_SYS_ADMIN" in s["process"]["capabilities"]["bounding"]
    assert s["linux"]["maskedPaths"] == [] and s["linux"]["readonlyPaths"] == []
    assert "ro" not in next(m for m in s["mounts"] if m["type"] == "sysfs")["options"]
    s = oci.generate_spec("default", "c", oci.with_added_capabilities(["CAP_SYS_ADMIN"]),
                          oci.with_dropped_capabilities(["CAP_KILL"]))
    assert "CAP_SYS_ADMIN" in s["process"]["capabilities"]["effective"]
    assert "CAP_KILL" not in s["process"]["capabilities"]["permitted"]
