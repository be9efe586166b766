"""Specs from cri/spec.py accepted and enforced by the real runc (root only).

A pause-like sandbox (busybox ``sleep``) is run from :func:`sandbox_spec` in a
private network namespace (runc makes it), then containers from
:func:`container_spec` join its namespaces through ``/proc/<pid>/ns/*``:
with RuntimeDefault seccomp ``unshare -U`` (no capability needed) is refused,
Unconfined allows it; a privileged container gets the daemon's capabilities and
a writable /sys. Each test uses its own runc ``--root`` and ids, and deletes
everything it made.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.cri import spec as S
from aiocontainerd.cri.config import CRIConfig

pytestmark = pytest.mark.integration

RUNC = shutil.which("runc") or "/usr/sbin/runc"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "sleep", "cat", "grep", "id", "unshare", "mount", "hostname", "touch")

if os.geteuid() != 0 or not os.path.exists(RUNC) or not os.path.exists(BUSYBOX):
    pytest.skip("needs root, runc and busybox-static", allow_module_level=True)

PAUSE_IMAGE = {"config": {"Entrypoint": ["/bin/sleep"], "Cmd": ["3600"], "Env": ["PATH=/bin"]}, "rootfs": {}}
BUSYBOX_IMAGE = {"config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "User": "app"}, "rootfs": {}}


def make_rootfs(path: Path) -> Path:
    (path / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, path / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", path / "bin" / applet)
    for d in ("proc", "sys", "dev", "etc", "tmp"):
        (path / d).mkdir(exist_ok=True)
    (path / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n")
    (path / "etc/group").write_text("root:x:0:\napp:x:1000:\nextra:x:2000:app\n")
    return path


class Runc:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "runc-root"
        self.ids: list[str] = []

    def bundle(self, id: str, spec: dict) -> Path:
        bundle = self.base / id
        make_rootfs(bundle / "rootfs")
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    def run(self, id: str, spec: dict, *, detach: bool = False) -> subprocess.CompletedProcess[str]:
        bundle = self.bundle(id, spec)
        self.ids.append(id)
        argv = [RUNC, "--root", str(self.root), "run", "--bundle", str(bundle)]
        if detach:  # the container keeps its stdio: no pipes, or reading them never ends
            argv += ["-d", "--pid-file", str(bundle / "pid")]
            with open(bundle / "runc.err", "w+") as err:
                proc = subprocess.run([*argv, id], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=err, text=True, timeout=60)
                err.seek(0)
                return subprocess.CompletedProcess(proc.args, proc.returncode, "", err.read())
        return subprocess.run([*argv, id], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60)

    def pid(self, id: str) -> int:
        return int((self.base / id / "pid").read_text())

    def cleanup(self) -> None:
        for id in reversed(self.ids):
            subprocess.run([RUNC, "--root", str(self.root), "delete", "--force", id], capture_output=True,
                           timeout=30)


@pytest.fixture
def runc(tmp_path: Path) -> Iterator[Runc]:
    r = Runc(tmp_path)
    try:
        yield r
    finally:
        r.cleanup()


def _pod(privileged: bool = False) -> api.PodSandboxConfig:
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="spec-test", uid="u1", namespace="default"),
        hostname="spec-pod", linux=api.LinuxPodSandboxConfig(
            sysctls={"net.ipv4.ip_forward": "1"},
            security_context=api.LinuxSandboxSecurityContext(privileged=privileged,
                                                             seccomp=api.SecurityProfile())))


def _files(base: Path) -> S.SandboxFiles:
    root, state = base / "sandbox-root", base / "sandbox-state"
    root.mkdir()
    (state / "shm").mkdir(parents=True)
    files = S.SandboxFiles.of(str(root), str(state))
    Path(files.hostname).write_text("spec-pod\n")
    Path(files.hosts).write_text("127.0.0.1 localhost\n")
    Path(files.resolv_conf).write_text("nameserver 127.0.0.53\n")
    return files


def _sandbox(runc: Runc, privileged: bool = False) -> tuple[api.PodSandboxConfig, S.SandboxFiles, int]:
    files = _files(runc.base)
    pod = _pod(privileged)
    sid = "sb-" + uuid.uuid4().hex[:12]
    spec = S.sandbox_spec(sid, pod, PAUSE_IMAGE, netns_path="", files=files, cri_config=CRIConfig(),
                          image_name="pause", rootfs=str(runc.base / "unused"))
    result = runc.run(sid, spec, detach=True)
    assert result.returncode == 0, result.stderr
    return pod, files, runc.pid(sid)


def _container(runc: Runc, pod: api.PodSandboxConfig, files: S.SandboxFiles, pid: int, script: str,
               sc: api.LinuxContainerSecurityContext) -> subprocess.CompletedProcess[str]:
    cid = "c-" + uuid.uuid4().hex[:12]
    rootfs = make_rootfs(runc.base / f"{cid}-view")
    config = api.ContainerConfig(metadata=api.ContainerMetadata(name="c"), command=["sh", "-c", script],
                                 linux=api.LinuxContainerConfig(security_context=sc))
    spec = S.container_spec(cid, "sb", config, pod, BUSYBOX_IMAGE, sandbox_pid=pid, files=files,
                            cri_config=CRIConfig(), image_name="busybox", rootfs=str(rootfs))
    return runc.run(cid, spec)


def test_default_seccomp_blocks_unshare(runc: Runc) -> None:
    pod, files, pid = _sandbox(runc)
    script = ("id; hostname; cat /proc/sys/net/ipv4/ip_forward; "
              "unshare -U true && echo UNSHARE=ok || echo UNSHARE=denied")
    default = api.LinuxContainerSecurityContext(seccomp=api.SecurityProfile())
    result = _container(runc, pod, files, pid, script, default)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "uid=1000(app) gid=1000(app)" in out and "2000(extra)" in out
    assert "spec-pod" in out                      # the pod's UTS namespace
    assert "\n1\n" in out                         # the pod's netns carries its sysctl
    assert "UNSHARE=denied" in out
    unconfined = api.LinuxContainerSecurityContext(seccomp=api.SecurityProfile(
        profile_type=api.SecurityProfileProfileType.Unconfined))
    result = _container(runc, pod, files, pid, "unshare -U true && echo UNSHARE=ok || echo UNSHARE=denied",
                        unconfined)
    assert result.returncode == 0, result.stderr
    assert "UNSHARE=ok" in result.stdout
    own_net = os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/{pid}/ns/net") != own_net    # a private network namespace


def test_privileged(runc: Runc) -> None:
    pod, files, pid = _sandbox(runc, privileged=True)
    sc = api.LinuxContainerSecurityContext(privileged=True, run_as_user=api.Int64Value(0))
    script = "grep CapEff /proc/self/status; grep ' /sys ' /proc/self/mounts; touch /etc/x && echo RW"
    result = _container(runc, pod, files, pid, script, sc)
    assert result.returncode == 0, result.stderr
    with open("/proc/self/status") as f:
        own = next(line.split()[1] for line in f if line.startswith("CapEff"))
    assert f"CapEff:\t{own}" in result.stdout
    sys_line = next(line for line in result.stdout.splitlines() if " /sys " in line)
    assert " rw," in sys_line
    assert "RW" in result.stdout
