"""CRI → OCI spec generation (cri/spec.py, cri/seccomp.py, cri/security.py) against containerd's rules.

Pure unit tests: rootfs files live in tmp dirs, host probes (capabilities,
oom_score_adj, cgroup mode, mountinfo) are monkeypatched where they matter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.cri import seccomp, security
from aiocontainerd.cri import spec as S
from aiocontainerd.cri.config import ContainerdConfig, CRIConfig, Runtime
from aiocontainerd.errors import ContainerdError, InvalidArgument, NotFound, Unimplemented

NS = api.NamespaceMode
PROP = api.MountPropagation
PT = api.SecurityProfileProfileType
ALL_CAPS = security.known_capabilities()


@pytest.fixture(autouse=True)
def _host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A predictable host: every capability, oom_score_adj 0 and lowerable, cgroup v1, seccomp."""
    monkeypatch.setattr(security, "current_capabilities", lambda: list(ALL_CAPS))
    monkeypatch.setattr(security, "can_lower_oom_score_adj", lambda: True)
    monkeypatch.setattr(security, "current_oom_score_adj", lambda: 0)
    monkeypatch.setattr(security, "apparmor_enabled", lambda disabled=False: False)
    monkeypatch.setattr(seccomp, "seccomp_enabled", lambda: True)
    import aiocontainerd.cgroups as cg

    monkeypatch.setattr(cg, "mode", lambda: "v1")
    monkeypatch.setattr(S, "swap_controller_available", lambda: True)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "app:x:1000:1001:app:/home/app:/bin/sh\n"
                                     "nobody:x:65534:65534::/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nwheel:x:10:root,app\napp:x:1001:app\n"
                                    "audio:x:29:app\nstaff:x:50:\n")
    return root


@pytest.fixture
def files(tmp_path: Path) -> S.SandboxFiles:
    root, state = tmp_path / "sb-root", tmp_path / "sb-state"
    root.mkdir()
    (state / "shm").mkdir(parents=True)
    f = S.SandboxFiles.of(str(root), str(state))
    for p in (f.hostname, f.hosts, f.resolv_conf):
        Path(p).write_text("x\n")
    return f


IMAGE = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
         "config": {"Entrypoint": ["/entry"], "Cmd": ["default-arg"], "Env": ["PATH=/img/bin", "IMG=1"],
                    "WorkingDir": "/work", "Labels": {"a": "b"}}}


def pod(**linux: object) -> api.PodSandboxConfig:
    sc = linux.pop("sc", None) or api.LinuxSandboxSecurityContext()
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="pod", uid="uid-1", namespace="ns", attempt=0),
        hostname="podhost", log_directory="/var/log/pods/x", annotations={"pod.ann/x": "1"},
        linux=api.LinuxPodSandboxConfig(security_context=sc, **linux))  # type: ignore[arg-type]


def ctr(*, sc: api.LinuxContainerSecurityContext | None = None,
        resources: api.LinuxContainerResources | None = None, **kw: object) -> api.ContainerConfig:
    linux = api.LinuxContainerConfig(security_context=sc or api.LinuxContainerSecurityContext(),
                                     resources=resources)
    return api.ContainerConfig(metadata=api.ContainerMetadata(name="c1"), linux=linux,
                               **kw)  # type: ignore[arg-type]


def build(config: api.ContainerConfig, files: S.SandboxFiles, *, sandbox: api.PodSandboxConfig | None = None,
          image: dict | None = None, cri: CRIConfig | None = None, **kw: object) -> dict:
    return S.container_spec("cid", "sid", config, sandbox or pod(), IMAGE if image is None else image,
                            sandbox_pid=4242, files=files, cri_config=cri or CRIConfig(), image_name="img:1",
                            **kw)  # type: ignore[arg-type]


def ns_paths(spec: dict) -> dict[str, str]:
    return {n["type"]: n.get("path", "") for n in spec["linux"]["namespaces"]}


def mount_at(spec: dict, dst: str) -> dict | None:
    return next((m for m in spec["mounts"] if m["destination"] == dst), None)


# -- command line ------------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "args", "entrypoint", "cmd", "expected"), [
    ([], [], ["/entry"], ["c"], ["/entry", "c"]),
    ([], ["a"], ["/entry"], ["c"], ["/entry", "a"]),
    (["/x"], [], ["/entry"], ["c"], ["/x"]),
    (["/x"], ["a"], ["/entry"], ["c"], ["/x", "a"]),
    ([], [], [""], ["c"], ["c"]),                 # entrypoint [""] is "reset"
    ([], [], [], ["c", "d"], ["c", "d"]),
    ([], ["a"], [], [], ["a"]),
])
def test_process_args(command, args, entrypoint, cmd, expected) -> None:
    config = api.ContainerConfig(command=command, args=args)
    assert S.process_args(config, {"Entrypoint": entrypoint, "Cmd": cmd}) == expected


def test_no_command() -> None:
    with pytest.raises(InvalidArgument, match="no command specified"):
        S.process_args(api.ContainerConfig(), {"config": {}, "rootfs": {}})


def test_env_cwd_tty_hostname(files) -> None:
    config = ctr(envs=[api.KeyValue(key="IMG", value=b"2"), api.KeyValue(key="NEW", value=b"v=w")],
                 tty=True)
    spec = build(config, files)
    p = spec["process"]
    assert p["args"] == ["/entry", "default-arg"]
    assert p["env"] == ["PATH=/img/bin", "TERM=xterm", "HOSTNAME=podhost", "IMG=2", "NEW=v=w"]
    assert p["cwd"] == "/work" and p["terminal"] is True
    assert p["noNewPrivileges"] is False and "rlimits" not in p
    assert spec["root"] == {"path": "rootfs"}
    spec = build(ctr(working_dir="/req"), files, sandbox=api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="p")), hostname="node1")
    assert spec["process"]["cwd"] == "/req"
    assert "HOSTNAME=node1" in spec["process"]["env"]


# -- users and groups --------------------------------------------------------------------------

@pytest.mark.parametrize(("sc", "image_user", "policy", "expected"), [
    (api.LinuxContainerSecurityContext(), "", "Merge", (0, 0, [0, 10])),
    (api.LinuxContainerSecurityContext(), "app", "Merge", (1000, 1001, [10, 29, 1001])),
    (api.LinuxContainerSecurityContext(), "app:staff", "Merge", (1000, 50, [10, 29, 50])),
    (api.LinuxContainerSecurityContext(), "1000:7", "Merge", (1000, 7, [7, 10, 29])),
    (api.LinuxContainerSecurityContext(), "4321", "Merge", (4321, 0, [0])),
    (api.LinuxContainerSecurityContext(run_as_user=api.Int64Value(1000)), "nobody", "Merge",
     (1000, 1001, [10, 29, 1001])),
    (api.LinuxContainerSecurityContext(run_as_user=api.Int64Value(1000), run_as_group=api.Int64Value(5)), "",
     "Merge", (1000, 5, [5, 10, 29])),
    (api.LinuxContainerSecurityContext(run_as_username="app", supplemental_groups=[300, 10]), "", "Merge",
     (1000, 1001, [10, 29, 300, 1001])),
    (api.LinuxContainerSecurityContext(run_as_username="app", supplemental_groups=[300]), "", "Strict",
     (1000, 1001, [300, 1001])),
])
def test_users(rootfs, files, sc, image_user, policy, expected) -> None:
    sc.supplemental_groups_policy = getattr(api.SupplementalGroupsPolicy, policy)
    image = {"config": {"Cmd": ["sh"], "User": image_user}, "rootfs": {}}
    spec = build(ctr(sc=sc), files, image=image, rootfs=str(rootfs))
    user = spec["process"]["user"]
    assert (user["uid"], user["gid"], user["additionalGids"]) == expected


@pytest.mark.parametrize(("user", "error"), [
    ("2147483648", InvalidArgument), ("99999999999999999999", InvalidArgument), ("-1", InvalidArgument),
    ("1:2147483648", InvalidArgument), ("a:b:c", InvalidArgument), ("ghost", NotFound),
    ("app:ghosts", NotFound),
])
def test_bad_users(rootfs, files, user, error) -> None:
    with pytest.raises(error):
        build(ctr(), files, image={"config": {"Cmd": ["sh"], "User": user}}, rootfs=str(rootfs))


def test_gid_without_uid(files) -> None:
    sc = api.LinuxContainerSecurityContext(run_as_group=api.Int64Value(5))
    with pytest.raises(InvalidArgument, match="without user"):
        build(ctr(sc=sc), files)


@pytest.mark.parametrize(("name", "uid", "gid", "expected"), [
    ("", None, None, ""), ("", 5, None, "5"), ("u", 5, None, "u"), ("u", 5, 6, "u:6"), ("", 5, 6, "5:6"),
])
def test_generate_user_string(name, uid, gid, expected) -> None:
    def to(v: int | None) -> api.Int64Value | None:
        return None if v is None else api.Int64Value(v)

    assert security.generate_user_string(name, to(uid), to(gid)) == expected


# -- mounts ------------------------------------------------------------------------------------

def test_sandbox_files_and_cgroup_mount(files) -> None:
    spec = build(ctr(), files)
    assert mount_at(spec, "/run") is None
    assert mount_at(spec, "/etc/hosts") == {"destination": "/etc/hosts", "type": "bind",
                                            "source": files.hosts, "options": ["rbind", "rprivate", "rw"]}
    assert mount_at(spec, "/etc/hostname")["source"] == files.hostname
    assert mount_at(spec, "/etc/resolv.conf")["source"] == files.resolv_conf
    assert mount_at(spec, "/dev/shm")["source"] == files.shm
    assert [m["type"] for m in spec["mounts"] if m["destination"] == "/dev/shm"] == ["bind"]
    assert mount_at(spec, "/sys/fs/cgroup") == {"destination": "/sys/fs/cgroup", "type": "cgroup",
                                                "source": "cgroup",
                                                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    ro = build(ctr(sc=api.LinuxContainerSecurityContext(readonly_rootfs=True)), files)
    assert mount_at(ro, "/etc/hosts")["options"][-1] == "ro" and ro["root"]["readonly"] is True
    assert mount_at(ro, "/dev/shm")["options"][-1] == "rw"


def test_host_ipc_shm(files) -> None:
    sc = api.LinuxContainerSecurityContext(namespace_options=api.NamespaceOption(ipc=NS.NODE))
    assert mount_at(build(ctr(sc=sc), files), "/dev/shm")["source"] == "/dev/shm"


def test_cri_mounts_order_and_override(tmp_path, files) -> None:
    a, b = tmp_path / "a", tmp_path / "missing" / "b"
    a.mkdir()
    mounts = [api.Mount(container_path="/x/y/z", host_path=str(a), readonly=True),
              api.Mount(container_path="/etc/hosts", host_path=str(a)),
              api.Mount(container_path="/x", host_path=str(b))]
    spec = build(ctr(mounts=mounts), files)
    binds = [m for m in spec["mounts"] if m["type"] == "bind"]
    dests = [m["destination"] for m in binds]
    assert dests.index("/x") < dests.index("/x/y/z")
    assert mount_at(spec, "/etc/hosts")["source"] == str(a)       # CRI mount wins over the sandbox file
    assert b.is_dir()                                              # missing source created
    assert mount_at(spec, "/x/y/z")["options"] == ["rbind", "rprivate", "ro"]


def test_dev_mount_hides_defaults(tmp_path, files) -> None:
    spec = build(ctr(mounts=[api.Mount(container_path="/dev", host_path=str(tmp_path))]), files)
    # default /dev/* mounts go; the pod's /dev/shm bind (an extra mount) stays, above /dev
    assert [(m["destination"], m["type"]) for m in spec["mounts"] if m["destination"].startswith("/dev")] == [
        ("/dev", "bind"), ("/dev/shm", "bind")]


def _info(optional: tuple[str, ...]) -> S.MountInfo:
    return S.MountInfo(mountpoint="/", optional=optional, fstype="ext4", vfs_options=())


@pytest.mark.parametrize(("propagation", "optional", "option", "rootfs_prop", "ok"), [
    (PROP.PROPAGATION_BIDIRECTIONAL, ("shared:1",), "rshared", "rshared", True),
    (PROP.PROPAGATION_BIDIRECTIONAL, ("master:1",), None, None, False),
    (PROP.PROPAGATION_BIDIRECTIONAL, (), None, None, False),
    (PROP.PROPAGATION_HOST_TO_CONTAINER, ("master:1",), "rslave", "rslave", True),
    (PROP.PROPAGATION_HOST_TO_CONTAINER, ("shared:3",), "rslave", "rslave", True),
    (PROP.PROPAGATION_HOST_TO_CONTAINER, (), None, None, False),
    (PROP.PROPAGATION_PRIVATE, (), "rprivate", None, True),
])
def test_propagation(monkeypatch, tmp_path, files, propagation, optional, option, rootfs_prop, ok) -> None:
    monkeypatch.setattr(S, "lookup_mount", lambda path: _info(optional))
    config = ctr(mounts=[api.Mount(container_path="/m", host_path=str(tmp_path), propagation=propagation)])
    if not ok:
        with pytest.raises(InvalidArgument, match="not a shared"):
            build(config, files)
        return
    spec = build(config, files)
    assert mount_at(spec, "/m")["options"] == ["rbind", option, "rw"]
    assert spec["linux"].get("rootfsPropagation") == rootfs_prop


@pytest.mark.parametrize(("readonly", "rro", "supported", "propagation", "result"), [
    (True, True, False, PROP.PROPAGATION_PRIVATE, "RROUnsupported"),
    (True, True, True, PROP.PROPAGATION_PRIVATE, "rro"),
    (True, True, True, PROP.PROPAGATION_HOST_TO_CONTAINER, "needs private propagation"),
    (False, True, True, PROP.PROPAGATION_PRIVATE, "conflicts with RW"),
])
def test_recursive_readonly(monkeypatch, tmp_path, files, readonly, rro, supported, propagation,
                            result) -> None:
    monkeypatch.setattr(S, "lookup_mount", lambda path: _info(("shared:1",)))
    config = ctr(mounts=[api.Mount(container_path="/m", host_path=str(tmp_path), readonly=readonly,
                                   recursive_read_only=rro, propagation=propagation)])
    features = api.RuntimeHandlerFeatures(recursive_read_only_mounts=supported)
    if result == "rro":
        assert mount_at(build(config, files, features=features), "/m")["options"][-1] == "rro"
    else:
        with pytest.raises(InvalidArgument, match=result):
            build(config, files, features=features)


def test_image_mount_unsupported(tmp_path, files) -> None:
    config = ctr(mounts=[api.Mount(container_path="/m", image=api.ImageSpec(image="busybox"))])
    with pytest.raises(Unimplemented):
        build(config, files)


def test_image_volumes(tmp_path, files) -> None:
    image = {"config": {"Cmd": ["sh"], "Volumes": {"/data": {}, "../../etc/evil": {}, "": {}, "/": {},
                                                   "rel/dir": {}, "/covered": {}}}}
    config = ctr(mounts=[api.Mount(container_path="/covered/", host_path=str(tmp_path))])
    vols = S.image_volume_mounts(config, image, str(tmp_path / "c"))
    assert sorted(v.container_path for v in vols) == ["/data", "/etc/evil", "/rel/dir"]
    assert all(v.host_path.startswith(str(tmp_path / "c" / "volumes")) for v in vols)
    spec = build(config, files, image=image, extra_mounts=vols)
    assert mount_at(spec, "/etc/evil")["source"].startswith(str(tmp_path / "c" / "volumes"))
    assert all(os.path.isdir(v.host_path) for v in vols)


def test_populate_volumes(tmp_path) -> None:
    root = tmp_path / "r"
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "sub" / "f").write_text("hi")
    os.symlink("/data", root / "link")
    vol = api.Mount(container_path="/link", host_path=str(tmp_path / "v"))
    S.populate_volumes(str(root), [vol])
    assert (tmp_path / "v" / "sub" / "f").read_text() == "hi"


# -- privileges ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("add", "drop", "has", "lacks"), [
    (["SYS_ADMIN"], ["chown"], ["CAP_SYS_ADMIN", "CAP_KILL"], ["CAP_CHOWN"]),
    (["ALL"], [], ALL_CAPS, []),
    (["ALL"], ["CHOWN"], ["CAP_SYS_ADMIN"], ["CAP_CHOWN"]),
    ([], ["ALL"], [], ALL_CAPS),
    (["NET_ADMIN"], ["all"], ["CAP_NET_ADMIN"], ["CAP_CHOWN", "CAP_KILL"]),
])
def test_capabilities(files, add, drop, has, lacks) -> None:
    sc = api.LinuxContainerSecurityContext(capabilities=api.Capability(add_capabilities=add,
                                                                       drop_capabilities=drop))
    caps = build(ctr(sc=sc), files)["process"]["capabilities"]
    for key in ("bounding", "effective", "permitted"):
        assert set(has) <= set(caps[key])
        assert not set(lacks) & set(caps[key])
    assert "ambient" not in caps


def test_privileged(files) -> None:
    sc = api.LinuxContainerSecurityContext(privileged=True, seccomp=api.SecurityProfile(),
                                           masked_paths=["/proc/kcore"])
    with pytest.raises(InvalidArgument, match="no privileged container allowed in sandbox"):
        build(ctr(sc=sc), files)
    priv_pod = pod(sc=api.LinuxSandboxSecurityContext(privileged=True))
    spec = build(ctr(sc=sc), files, sandbox=priv_pod)
    assert spec["process"]["capabilities"]["bounding"] == ALL_CAPS
    assert "maskedPaths" not in spec["linux"] and "readonlyPaths" not in spec["linux"]
    assert "seccomp" not in spec["linux"]
    assert mount_at(spec, "/sys")["options"][-1] == "rw"
    assert mount_at(spec, "/sys/fs/cgroup")["options"][-1] == "rw"
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert any(d["path"] == "/dev/null" for d in spec["linux"]["devices"])
    runtimes = {"runc": Runtime(privileged_without_host_devices=True)}
    cri = CRIConfig(containerd=ContainerdConfig(runtimes=runtimes))
    spec = build(ctr(sc=sc), files, sandbox=priv_pod, cri=cri)
    assert "devices" not in spec["linux"]


def test_no_new_privs_and_paths(files) -> None:
    spec = build(ctr(), files)
    assert spec["process"]["noNewPrivileges"] is False
    assert spec["linux"]["maskedPaths"] == [] and spec["linux"]["readonlyPaths"] == []
    sc = api.LinuxContainerSecurityContext(no_new_privs=True, masked_paths=["/proc/a"],
                                           readonly_paths=["/proc/b"])
    spec = build(ctr(sc=sc), files)
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["linux"]["maskedPaths"] == ["/proc/a"] and spec["linux"]["readonlyPaths"] == ["/proc/b"]


def test_devices(files) -> None:
    config = ctr(devices=[api.Device(host_path="/dev/null", container_path="/dev/mynull", permissions="rw")])
    spec = build(config, files)
    st = os.stat("/dev/null")
    assert spec["linux"]["devices"] == [{"path": "/dev/mynull", "type": "c", "major": os.major(st.st_rdev),
                                         "minor": os.minor(st.st_rdev), "fileMode": 0o666, "uid": 0,
                                         "gid": 0}]
    assert spec["linux"]["resources"]["devices"][-1] == {"allow": True, "type": "c", "major": 1, "minor": 3,
                                                         "access": "rw"}
    with pytest.raises(NotFound):
        build(ctr(devices=[api.Device(host_path="/dev/nope", container_path="/dev/x", permissions="r")]),
              files)
    with pytest.raises(InvalidArgument, match="not a device"):
        build(ctr(devices=[api.Device(host_path="/etc/hostname", container_path="/x", permissions="r")]),
              files)


# -- seccomp / apparmor -------------------------------------------------------------------------

def _names(profile: dict) -> set[str]:
    return {n for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
            for n in rule["names"]}


def test_default_profile_shape() -> None:
    prof = seccomp.default_profile(["CAP_CHOWN"], machine="x86_64", kernel=(6, 1))
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO"
    assert prof["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    names = _names(prof)
    assert {"read", "write", "execve", "openat", "arch_prctl", "ptrace", "clone3"} - names == {"clone3"}
    assert not {"unshare", "mount", "keyctl", "setns", "reboot", "chroot", "bpf"} & names
    clone = next(r for r in prof["syscalls"] if r["names"] == ["clone"])
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "op": "SCMP_CMP_MASKED_EQ"}]
    clone3 = next(r for r in prof["syscalls"] if r["names"] == ["clone3"])
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    sockets = [r["args"][0] for r in prof["syscalls"] if r["names"] == ["socket"]]
    assert sockets == [{"index": 0, "value": 38, "op": "SCMP_CMP_LT"},
                       {"index": 0, "value": 39, "op": "SCMP_CMP_EQ"},
                       {"index": 0, "value": 40, "op": "SCMP_CMP_GT"}]
    assert "ptrace" not in _names(seccomp.default_profile([], machine="x86_64", kernel=(4, 4)))
    admin = seccomp.default_profile(["CAP_SYS_ADMIN", "CAP_SYS_CHROOT"], machine="aarch64", kernel=(6, 1))
    assert {"unshare", "mount", "clone", "clone3", "chroot", "set_tls"} <= _names(admin)
    assert admin["architectures"] == ["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"]
    s390 = seccomp.default_profile([], machine="s390x", kernel=(6, 1))
    assert next(r for r in s390["syscalls"] if r["names"] == ["clone"])["args"][0]["index"] == 1


@pytest.mark.parametrize(("profile", "path", "unset", "expected"), [
    (None, "", "", None),
    (None, "runtime/default", "", "default"),
    (None, "docker/default", "", "default"),
    (None, "unconfined", "", None),
    (None, "", "runtime/default", "default"),
    (None, "localhost/PROFILE", "", "file"),
    (api.SecurityProfile(profile_type=PT.RuntimeDefault), "", "", "default"),
    (api.SecurityProfile(profile_type=PT.Unconfined), "runtime/default", "", None),
    (api.SecurityProfile(profile_type=PT.Localhost, localhost_ref="PROFILE"), "", "", "file"),
])
def test_seccomp_selection(tmp_path, files, profile, path, unset, expected) -> None:
    prof_file = tmp_path / "p.json"
    prof_file.write_text(json.dumps({"defaultAction": "SCMP_ACT_LOG"}))
    path = path.replace("PROFILE", str(prof_file).lstrip("/")).replace("localhost/", "localhost//")
    if profile is not None and profile.localhost_ref:
        profile.localhost_ref = str(prof_file)
    sc = api.LinuxContainerSecurityContext(seccomp=profile, seccomp_profile_path=path)
    spec = build(ctr(sc=sc), files, cri=CRIConfig(unset_seccomp_profile=unset))
    got = spec["linux"].get("seccomp")
    if expected is None:
        assert got is None
    elif expected == "file":
        assert got == {"defaultAction": "SCMP_ACT_LOG"}
    else:
        assert got["defaultAction"] == "SCMP_ACT_ERRNO" and "read" in _names(got)


def test_seccomp_follows_caps(files) -> None:
    sc = api.LinuxContainerSecurityContext(seccomp=api.SecurityProfile(),
                                           capabilities=api.Capability(add_capabilities=["SYS_ADMIN"]))
    assert "unshare" in _names(build(ctr(sc=sc), files)["linux"]["seccomp"])


@pytest.mark.parametrize("bad", [
    dict(seccomp_profile_path="bogus"),
    dict(seccomp=api.SecurityProfile(profile_type=PT.RuntimeDefault, localhost_ref="x")),
    dict(seccomp=api.SecurityProfile(profile_type=PT.Localhost, localhost_ref="/nonexistent.json")),
])
def test_seccomp_errors(files, bad) -> None:
    with pytest.raises(InvalidArgument):
        build(ctr(sc=api.LinuxContainerSecurityContext(**bad)), files)


def test_seccomp_unsupported(monkeypatch, files) -> None:
    monkeypatch.setattr(seccomp, "seccomp_enabled", lambda: False)
    with pytest.raises(InvalidArgument, match="seccomp is not supported"):
        build(ctr(sc=api.LinuxContainerSecurityContext(seccomp=api.SecurityProfile())), files)
    unconfined = api.SecurityProfile(profile_type=PT.Unconfined)
    spec = build(ctr(sc=api.LinuxContainerSecurityContext(seccomp=unconfined)), files)
    assert "seccomp" not in spec["linux"]


def test_apparmor_unsupported(files) -> None:
    with pytest.raises(InvalidArgument, match="apparmor is not supported"):
        build(ctr(sc=api.LinuxContainerSecurityContext(apparmor=api.SecurityProfile())), files)
    with pytest.raises(InvalidArgument, match="apparmor is not supported"):
        build(ctr(sc=api.LinuxContainerSecurityContext(apparmor_profile="runtime/default")), files)
    spec = build(ctr(sc=api.LinuxContainerSecurityContext(
        apparmor=api.SecurityProfile(profile_type=PT.Unconfined))), files)
    assert "apparmorProfile" not in spec["process"]
    assert security.apparmor_profile_for(None, "", privileged=False,
                                         enabled=True) == "cri-containerd.apparmor.d"
    assert security.apparmor_profile_for(None, "", privileged=True, enabled=True) is None


# -- sysctls ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("sysctls", "host_net", "host_ipc", "ok"), [
    ({"kernel.shm_rmid_forced": "1", "kernel.msgmax": "1", "kernel.sem": "1 2 3 4", "fs.mqueue.msg_max": "9"},
     True, False, True),
    ({"net.ipv4.ip_forward": "1", "net/ipv4/conf/eth0.1/rp_filter": "0"}, False, True, True),
    ({"net.ipv4.ip_forward": "1"}, True, False, False),
    ({"kernel.shmmax": "1"}, False, True, False),
    ({"kernel.hostname": "x"}, False, False, False),
    ({"vm.swappiness": "1"}, False, False, False),
    ({"kernel.shm_rmid_forced": "1+kernel.core_pattern=|/evil"}, False, False, False),
    ({"kernel.shm_rmid_forced": "1=2"}, False, False, False),
    ({"net.ipv4.ip_forward": "1\nkernel.core_pattern=x"}, False, False, False),
    ({"net.ipv4..x": "1"}, False, False, False),
    ({"net.ipv4.Bad Name": "1"}, False, False, False),
])
def test_sysctls(sysctls, host_net, host_ipc, ok) -> None:
    slashed = security.normalize_sysctl_name("net/ipv4/conf/eth0.1/rp_filter")
    assert slashed == "net.ipv4.conf.eth0/1.rp_filter"
    if ok:
        got = security.validate_sysctls(sysctls, host_network=host_net, host_ipc=host_ipc)
        assert got == {security.normalize_sysctl_name(k): v for k, v in sysctls.items()}
    else:
        with pytest.raises(InvalidArgument):
            security.validate_sysctls(sysctls, host_network=host_net, host_ipc=host_ipc)


# -- oom_score_adj, resources, cgroups, namespaces, annotations, labels -----------------------------

@pytest.mark.parametrize(("value", "restrict", "can_lower", "current", "expected"), [
    (-997, False, True, 0, -997), (-997, True, True, 0, 0), (-997, False, False, 0, 0),
    (500, True, False, 0, 500), (-997, True, True, -999, -997), (-998, False, False, -500, -500),
])
def test_clamp_oom(value, restrict, can_lower, current, expected) -> None:
    assert security.clamp_oom_score_adj(value, restrict=restrict, current=current,
                                        can_lower=can_lower) == expected


def test_oom_in_specs(monkeypatch, files) -> None:
    res = api.LinuxContainerResources(oom_score_adj=-997)
    assert build(ctr(resources=res), files)["process"]["oomScoreAdj"] == -997
    monkeypatch.setattr(security, "can_lower_oom_score_adj", lambda: False)
    assert build(ctr(resources=res), files)["process"]["oomScoreAdj"] == 0
    assert "oomScoreAdj" not in build(ctr(), files)["process"]
    sb = S.sandbox_spec("sid", pod(), {"config": {"Entrypoint": ["/pause"]}}, netns_path="/n", files=files,
                        cri_config=CRIConfig())
    assert sb["process"]["oomScoreAdj"] == 0
    monkeypatch.setattr(security, "can_lower_oom_score_adj", lambda: True)
    sb = S.sandbox_spec("sid", pod(), {"config": {"Entrypoint": ["/pause"]}}, netns_path="/n", files=files,
                        cri_config=CRIConfig())
    assert sb["process"]["oomScoreAdj"] == -998


def test_resources(monkeypatch, files) -> None:
    res = api.LinuxContainerResources(cpu_period=100000, cpu_quota=50000, cpu_shares=512, cpuset_cpus="0",
                                      cpuset_mems="0", memory_limit_in_bytes=1 << 28,
                                      unified={"memory.high": "100"},
                                      hugepage_limits=[api.HugepageLimit(page_size="2MB", limit=1 << 21)])
    r = build(ctr(resources=res), files)["linux"]["resources"]
    assert r["cpu"] == {"period": 100000, "quota": 50000, "shares": 512, "cpus": "0", "mems": "0"}
    assert r["memory"] == {"limit": 1 << 28, "swap": 1 << 28}
    assert r["unified"] == {"memory.high": "100"} and "hugepageLimits" not in r
    assert r["devices"] == [{"allow": False, "access": "rwm"}]
    res.memory_swap_limit_in_bytes = 1 << 29
    assert build(ctr(resources=res), files)["linux"]["resources"]["memory"]["swap"] == 1 << 29
    monkeypatch.setattr(S, "swap_controller_available", lambda: False)
    assert "swap" not in build(ctr(resources=res), files)["linux"]["resources"]["memory"]
    monkeypatch.setattr(S, "hugetlb_controller_present", lambda: True)
    cri = CRIConfig(disable_hugetlb_controller=False)
    assert build(ctr(resources=res), files, cri=cri)["linux"]["resources"]["hugepageLimits"] == [
        {"pageSize": "2MB", "limit": 1 << 21}]
    monkeypatch.setattr(S, "hugetlb_controller_present", lambda: False)
    with pytest.raises(InvalidArgument, match="hugetlb"):
        build(ctr(resources=res), files,
              cri=CRIConfig(disable_hugetlb_controller=False, tolerate_missing_hugetlb_controller=False))


@pytest.mark.parametrize(("parent", "expected"), [
    ("/kubepods/burstable/pod1", "/kubepods/burstable/pod1/cid"),
    ("kubepods-burstable-pod1.slice", "kubepods-burstable-pod1.slice:cri-containerd:cid"),
    ("/kubepods.slice/kubepods-besteffort.slice/x.slice", "x.slice:cri-containerd:cid"),
])
def test_cgroups_path(files, parent, expected) -> None:
    assert S.cgroups_path(parent, "cid") == expected
    assert build(ctr(), files, sandbox=pod(cgroup_parent=parent))["linux"]["cgroupsPath"] == expected
    assert build(ctr(), files)["linux"]["cgroupsPath"] == "/k8s.io/cid"


@pytest.mark.parametrize(("pid_mode", "expected_pid"), [
    (NS.POD, "/proc/4242/ns/pid"), (NS.CONTAINER, None), (NS.NODE, "/proc/4242/ns/pid"),
    (NS.TARGET, "/proc/77/ns/pid"),
])
def test_namespaces(files, pid_mode, expected_pid) -> None:
    sc = api.LinuxContainerSecurityContext(namespace_options=api.NamespaceOption(pid=pid_mode, target_id="t"))
    got = ns_paths(build(ctr(sc=sc), files, target_pid=77))
    assert got["network"] == "/proc/4242/ns/net" and got["ipc"] == "/proc/4242/ns/ipc"
    assert got["uts"] == "/proc/4242/ns/uts" and got["mount"] == ""
    assert got["pid"] == (expected_pid or "")   # CONTAINER: a new pid namespace of its own


def test_target_needs_pid(files) -> None:
    options = api.NamespaceOption(pid=NS.TARGET, target_id="t")
    sc = api.LinuxContainerSecurityContext(namespace_options=options)
    with pytest.raises(InvalidArgument, match="target"):
        build(ctr(sc=sc), files)


def test_cgroupns_on_v2(monkeypatch, files) -> None:
    import aiocontainerd.cgroups as cg

    monkeypatch.setattr(cg, "mode", lambda: "v2")
    assert "cgroup" in ns_paths(build(ctr(), files))
    priv = api.LinuxContainerSecurityContext(privileged=True)
    assert "cgroup" not in ns_paths(build(ctr(sc=priv), files,
                                          sandbox=pod(sc=api.LinuxSandboxSecurityContext(privileged=True))))


def test_userns_unsupported(files) -> None:
    mapping = api.IdMapping(host_id=100000, container_id=0, length=65536)
    userns = api.UserNamespace(mode=NS.POD, uids=[mapping], gids=[mapping])
    sc = api.LinuxContainerSecurityContext(namespace_options=api.NamespaceOption(userns_options=userns))
    with pytest.raises(InvalidArgument, match="different"):
        build(ctr(sc=sc), files)
    sb = pod(sc=api.LinuxSandboxSecurityContext(namespace_options=api.NamespaceOption(userns_options=userns)))
    with pytest.raises(Unimplemented, match="user namespaces"):
        build(ctr(sc=sc), files, sandbox=sb)
    with pytest.raises(Unimplemented):
        S.sandbox_spec("sid", sb, {"config": {"Entrypoint": ["/pause"]}}, netns_path="", files=files,
                       cri_config=CRIConfig())


def test_annotations_and_labels(files) -> None:
    cri = CRIConfig(containerd=ContainerdConfig(runtimes={"runc": Runtime(pod_annotations=["pod.ann/*"],
                                                                          container_annotations=["c.*"])}))
    config = ctr(annotations={"c.x": "1", "other": "2"})
    spec = build(config, files, cri=cri)
    assert spec["annotations"] == {
        "pod.ann/x": "1", "c.x": "1", "io.kubernetes.cri.sandbox-id": "sid",
        "io.kubernetes.cri.sandbox-namespace": "ns", "io.kubernetes.cri.sandbox-uid": "uid-1",
        "io.kubernetes.cri.sandbox-name": "pod", "io.kubernetes.cri.container-name": "c1",
        "io.kubernetes.cri.image-name": "img:1", "io.kubernetes.cri.container-type": "container"}
    labels = security.build_labels({"mine": "1", "a": "override"},
                                   {"a": "b", "containerd.io/gc.ref.content": "x",
                                    "io.cri-containerd.kind": "sandbox", "big": "x" * 5000}, "container")
    assert labels == {"a": "override", "mine": "1", "io.cri-containerd.kind": "container"}
    assert security.passthrough_annotations({"a/b": "1", "ab": "2"}, ["a*"]) == {"ab": "2"}


def test_base_runtime_spec(tmp_path, files) -> None:
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"ociVersion": "1.0.2", "process": {"rlimits": [
        {"type": "RLIMIT_NOFILE", "hard": 9, "soft": 9}], "cwd": "/"}, "linux": {"cgroupsPath": "/x"}}))
    cri = CRIConfig(containerd=ContainerdConfig(runtimes={"runc": Runtime(base_runtime_spec=str(base))}))
    spec = build(ctr(), files, cri=cri)
    assert spec["process"]["rlimits"][0]["hard"] == 9 and spec["linux"]["cgroupsPath"] == "/k8s.io/cid"


def test_cdi_unsupported(files) -> None:
    with pytest.raises(Unimplemented):
        build(ctr(CDI_devices=[api.CdiDevice(name="vendor.com/gpu=0")]), files)


# -- sandbox -------------------------------------------------------------------------------------

def test_sandbox_spec(rootfs, files) -> None:
    sc = api.LinuxSandboxSecurityContext(seccomp=api.SecurityProfile(), run_as_user=api.Int64Value(1000),
                                         supplemental_groups=[5])
    config = pod(sc=sc, sysctls={"net.ipv4.ip_unprivileged_port_start": "80"}, cgroup_parent="/kubepods/p",
                 resources=api.LinuxContainerResources(cpu_period=100000, cpu_quota=20000, cpu_shares=2,
                                                       memory_limit_in_bytes=1 << 20))
    image = {"config": {"Entrypoint": ["/pause"], "Cmd": ["-v"], "Env": ["A=1"], "WorkingDir": "/"}}
    cri = CRIConfig(enable_unprivileged_icmp=True, enable_unprivileged_ports=True)
    spec = S.sandbox_spec("sid", config, image, netns_path="/var/run/netns/cni-1", files=files,
                          cri_config=cri, image_name="registry.k8s.io/pause:3.10", rootfs=str(rootfs))
    p = spec["process"]
    assert p["args"] == ["/pause", "-v"] and p["env"] == ["A=1"] and p["noNewPrivileges"] is True
    # as containerd: the user (applied last) resets the pod's supplemental groups to its gid
    assert (p["user"]["uid"], p["user"]["gid"], p["user"]["additionalGids"]) == (1000, 1001, [1001])
    assert "rlimits" not in p and spec["root"] == {"path": "rootfs", "readonly": True}
    assert spec["hostname"] == "podhost"
    assert ns_paths(spec) == {"pid": "", "ipc": "", "uts": "", "mount": "", "network": "/var/run/netns/cni-1"}
    assert mount_at(spec, "/dev/shm") == {"destination": "/dev/shm", "type": "bind", "source": files.shm,
                                          "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}
    assert mount_at(spec, "/etc/resolv.conf")["source"] == files.resolv_conf
    assert mount_at(spec, "/run") is None
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "80",
                                       "net.ipv4.ping_group_range": "0 2147483647"} or \
        spec["linux"]["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "80"}
    assert spec["linux"]["resources"]["cpu"] == {"shares": 2}
    assert spec["linux"]["cgroupsPath"] == "/kubepods/p/sid"
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    ann = spec["annotations"]
    assert ann["io.kubernetes.cri.container-type"] == "sandbox"
    assert ann["io.kubernetes.cri.sandbox-id"] == "sid"
    assert ann["io.kubernetes.cri.sandbox-log-directory"] == "/var/log/pods/x"
    assert ann["io.kubernetes.cri.podsandbox.image-name"] == "registry.k8s.io/pause:3.10"
    assert ann["io.kubernetes.cri.sandbox-cpu-quota"] == "20000"
    assert ann["io.kubernetes.cri.sandbox-memory"] == str(1 << 20)
    assert "pod.ann/x" not in ann


def test_sandbox_host_namespaces(files) -> None:
    sc = api.LinuxSandboxSecurityContext(privileged=True, namespace_options=api.NamespaceOption(
        network=NS.NODE, pid=NS.NODE, ipc=NS.NODE))
    spec = S.sandbox_spec("sid", pod(sc=sc), {"config": {"Cmd": ["/pause"]}}, netns_path="", files=files,
                          cri_config=CRIConfig(enable_unprivileged_ports=True))
    assert ns_paths(spec) == {"mount": ""}
    assert mount_at(spec, "/dev/shm")["source"] == "/dev/shm"
    assert "sysctl" not in spec["linux"]
    assert "rw" in mount_at(spec, "/sys")["options"] and "ro" not in mount_at(spec, "/sys")["options"]
    with pytest.raises(InvalidArgument):
        S.sandbox_spec("sid", pod(sc=sc, sysctls={"net.core.somaxconn": "1"}), {"config": {"Cmd": ["/p"]}},
                       netns_path="", files=files, cri_config=CRIConfig())


def test_sandbox_needs_command(files) -> None:
    with pytest.raises(InvalidArgument, match="entrypoint and cmd"):
        S.sandbox_spec("sid", pod(), {"config": {}}, netns_path="", files=files, cri_config=CRIConfig())


def test_unknown_handler(files) -> None:
    with pytest.raises(NotFound):
        build(ctr(), files, runtime_handler="nope")


def test_errors_are_containerd_errors() -> None:
    assert issubclass(Unimplemented, ContainerdError)


def test_image_config_forms() -> None:
    assert S.image_config_of(IMAGE)["Entrypoint"] == ["/entry"]
    assert S.image_config_of({"Cmd": ["x"]}) == {"Cmd": ["x"]}
    assert S.image_config_of(None) == {}
