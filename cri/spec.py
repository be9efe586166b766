"""CRI configs turned into OCI runtime specs, as containerd's CRI plugin builds them.

Two entry points, pure apart from host reads (``/etc/passwd`` and ``/etc/group``
of the rootfs, ``/proc/self/{status,oom_score_adj,mountinfo,uid_map}``, device
nodes, cgroup files) and the creation of missing bind-mount sources (as
containerd's ``WithMounts`` does). They block: callers run them in a thread
(``await asyncio.to_thread(container_spec, ...)``).

- :func:`sandbox_spec` — the pause container: containerd
  ``internal/cri/server/podsandbox/sandbox_run_linux.go`` (``sandboxContainerSpec``,
  ``sandboxContainerSpecOpts``) and the privileged ``/sys`` fix-up of ``sandbox_run.go``;
- :func:`container_spec` — an application container: containerd
  ``internal/cri/server/container_create.go`` (``buildLinuxSpec``,
  ``platformSpecOpts``, ``linuxContainerMounts``, ``volumeMounts``),
  ``container_create_linux.go`` (``containerSpecOpts``) and the options of
  ``internal/cri/opts/spec_linux_opts.go`` / ``spec_opts.go`` / ``pkg/oci``.

Helpers the CRI services also use: :class:`SandboxFiles` (where a pod's
hostname/hosts/resolv.conf/shm live), :func:`cgroups_path`,
:func:`image_volume_mounts` + :func:`populate_volumes` (image ``VOLUME`` s),
:func:`linux_resources` (UpdateContainerResources), :func:`process_args`.

A spec is the runtime-spec ``config.json`` as a JSON ``dict``
(:data:`aiocontainerd.oci.Spec`), starting from :func:`aiocontainerd.oci.default_spec`
in namespace ``k8s.io`` (cgroups path ``/k8s.io/<id>`` unless the pod names a
cgroup parent) or, for containers, from the handler's ``base_runtime_spec`` file.
``image_config`` is the OCI image config document (``{"config": {...}, "rootfs":
..., ...}``, what ``CRIImage.config`` holds) or just its inner ``config`` object
(``Env``, ``Cmd``, ``Entrypoint``, ``User``, ``WorkingDir``, ``Volumes``, ``Labels``).

Decisions where this host or our scope differs from containerd:

- SELinux is off (``enable_selinux`` unsupported): ``selinux_options`` and
  mounts' ``selinux_relabel`` are ignored, no labels are set;
- AppArmor only where the kernel has it (:func:`security.apparmor_enabled`);
  otherwise a profile other than Unconfined is InvalidArgument, as containerd;
- ``oom_score_adj`` is clamped to the daemon's own value when
  ``restrict_oom_score_adj`` is set *or* the daemon lacks CAP_SYS_RESOURCE
  (runc would fail to set a lower value);
- user namespaces (``userns_options`` mode POD), CDI devices and image-volume
  mounts (``Mount.image``) are not supported: Unimplemented;
- pod sysctls are validated (:func:`security.validate_sysctls`) before runc sees them;
- a missing hugetlb controller is an error (without ``tolerate_missing_hugetlb_controller``)
  only when hugepage limits are actually requested;
- the sandbox carries ``io.kubernetes.cri.image-name`` besides containerd 2's
  ``io.kubernetes.cri.podsandbox.image-name``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import posixpath
import secrets
import socket
import stat
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiocontainerd import oci
from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.errors import InvalidArgument, NotFound, Unimplemented
from aiocontainerd.mount import unescape_mountinfo
from aiocontainerd.oci import Spec, _caps, _linux, _process, _resources
from aiocontainerd.oci.rootfs import DirRootFS, RootFS

from . import seccomp as seccomp_
from . import security
from .config import CRIConfig, Runtime

log = logging.getLogger(__name__)

#: the containerd namespace of every CRI object
K8S_NAMESPACE = "k8s.io"
#: rootfs path relative to the bundle (containerd's relativeRootfsPath)
RELATIVE_ROOTFS_PATH = "rootfs"
#: oom_score_adj of the pause container (kubernetes#47938)
DEFAULT_SANDBOX_OOM_ADJ = -998
#: cpu shares of the pause container
DEFAULT_SANDBOX_CPU_SHARES = 2
#: size of the pod's /dev/shm tmpfs (bytes), mounted ``mode=1777,size=...`` by the sandbox setup
DEFAULT_SHM_SIZE = 64 << 20
DEV_SHM = "/dev/shm"
ETC_HOSTS = "/etc/hosts"
ETC_HOSTNAME = "/etc/hostname"
RESOLV_CONF = "/etc/resolv.conf"

# OCI annotations (containerd internal/cri/annotations)
ANN_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
ANN_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
ANN_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
ANN_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
ANN_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
ANN_SANDBOX_LOG_DIR = "io.kubernetes.cri.sandbox-log-directory"
ANN_SANDBOX_IMAGE_NAME = "io.kubernetes.cri.podsandbox.image-name"
ANN_CONTAINER_NAME = "io.kubernetes.cri.container-name"
ANN_IMAGE_NAME = "io.kubernetes.cri.image-name"
ANN_SANDBOX_CPU_PERIOD = "io.kubernetes.cri.sandbox-cpu-period"
ANN_SANDBOX_CPU_QUOTA = "io.kubernetes.cri.sandbox-cpu-quota"
ANN_SANDBOX_CPU_SHARES = "io.kubernetes.cri.sandbox-cpu-shares"
ANN_SANDBOX_MEMORY = "io.kubernetes.cri.sandbox-memory"
CONTAINER_TYPE_SANDBOX = "sandbox"
CONTAINER_TYPE_CONTAINER = "container"

_NS = api.NamespaceMode
_PROP = api.MountPropagation


@dataclasses.dataclass(frozen=True)
class SandboxFiles:
    """Host files a pod's containers mount, as containerd lays them out.

    ``hostname``, ``hosts`` and ``resolv_conf`` live in the sandbox root dir
    (``<root>/io.containerd.grpc.v1.cri/sandboxes/<id>``), ``shm`` (a tmpfs the
    sandbox setup mounts) in the volatile state dir
    (``<state>/io.containerd.grpc.v1.cri/sandboxes/<id>/shm``). A container gets
    each one that exists when its spec is built (and no CRI mount covers it).
    """

    hostname: str
    hosts: str
    resolv_conf: str
    shm: str

    @classmethod
    def of(cls, root_dir: str, state_dir: str) -> SandboxFiles:
        """The files of a sandbox with SandboxRecord ``root_dir`` and ``state_dir``."""
        return cls(hostname=os.path.join(root_dir, "hostname"), hosts=os.path.join(root_dir, "hosts"),
                   resolv_conf=os.path.join(root_dir, "resolv.conf"), shm=os.path.join(state_dir, "shm"))


# -- small helpers -------------------------------------------------------------------------------

def image_config_of(image_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The inner image ``config`` object of a full image config document (or the object itself)."""
    if not image_config:
        return {}
    if isinstance(image_config.get("config"), Mapping) or "rootfs" in image_config \
            or "architecture" in image_config:
        return dict(image_config.get("config") or {})
    return dict(image_config)


def cgroups_path(cgroup_parent: str, id: str) -> str:
    """containerd's ``getCgroupsPath``: ``<parent>/<id>`` (cgroupfs) or ``<slice>:cri-containerd:<id>``
    when the parent's last element ends in ``.slice`` (systemd driver, runc's ``slice:prefix:name``)."""
    base = posixpath.basename(cgroup_parent.rstrip("/")) or cgroup_parent
    if base.endswith(".slice"):
        return f"{base}:cri-containerd:{id}"
    return posixpath.join(cgroup_parent, id)


def _clean(path: str) -> str:
    return posixpath.normpath(path) if path else "."


def _rootfs(rootfs: RootFS | str | None) -> RootFS | None:
    if isinstance(rootfs, str):
        return DirRootFS(rootfs)
    return rootfs


def _base_spec(id: str, runtime: Runtime | None) -> Spec:
    """containerd's ``runtimeSpec``: the default spec, or the handler's base spec file with the
    namespaced cgroups path."""
    if runtime is None or not runtime.base_runtime_spec:
        return oci.default_spec(K8S_NAMESPACE, id)
    try:
        with open(runtime.base_runtime_spec, "rb") as f:
            spec = oci.from_json(f.read())
    except OSError as e:
        raise InvalidArgument(f"can't load base OCI spec {runtime.base_runtime_spec!r}: {e}") from None
    spec = copy.deepcopy(spec)
    _linux(spec)["cgroupsPath"] = posixpath.join("/", K8S_NAMESPACE, id)
    return spec


def _without_default_security(spec: Spec) -> None:
    """containerd ``WithoutDefaultSecuritySettings``: no AppArmor profile, seccomp or rlimits."""
    p = _process(spec)
    p.pop("apparmorProfile", None)
    p.pop("rlimits", None)
    if "linux" in spec:
        spec["linux"].pop("seccomp", None)


def _without_mounts(spec: Spec, *destinations: str) -> None:
    spec["mounts"] = [m for m in spec.get("mounts") or []
                      if _clean(m.get("destination", "")) not in destinations]


def _set_env(spec: Spec, env: Sequence[str]) -> None:
    if env:
        p = _process(spec)
        p["env"] = oci.replace_or_append_env(p.get("env") or [], env)


def _set_namespace(spec: Spec, type_: str, path: str = "") -> None:
    oci.with_linux_namespace(type_, path)(None, spec)  # type: ignore[arg-type]


def _without_namespace(spec: Spec, type_: str) -> None:
    linux = _linux(spec)
    linux["namespaces"] = [n for n in linux.get("namespaces") or [] if n.get("type") != type_]


def _merge_gids(*lists: Sequence[int]) -> list[int]:
    """containerd ``mergeGids``: the union, sorted."""
    out: set[int] = set()
    for gids in lists:
        out.update(int(g) & 0xFFFFFFFF for g in gids)
    return sorted(out)


def _add_supplemental_groups(spec: Spec, groups: Sequence[int]) -> None:
    user = _process(spec).setdefault("user", {"uid": 0, "gid": 0})
    merged = _merge_gids(user.get("additionalGids") or [], groups)
    if merged:
        user["additionalGids"] = merged
    else:
        user.pop("additionalGids", None)


def _set_user(spec: Spec, ctx: oci.SpecContext, userstr: str) -> None:
    """containerd ``oci.WithUser``: uid/gid from a user string, names from the rootfs."""
    oci.with_user(userstr)(ctx, spec)


def _add_additional_gids(spec: Spec, ctx: oci.SpecContext, userstr: str) -> None:
    """CRI ``WithAdditionalGIDs``: groups listing the user in /etc/group merged with what is there."""
    before = list(_process(spec).get("user", {}).get("additionalGids") or [])
    oci.with_additional_gids(userstr)(ctx, spec)
    user = _process(spec)["user"]
    user["additionalGids"] = _merge_gids(user.get("additionalGids") or [], before)


def _sandbox_annotations(sandbox_id: str, config: api.PodSandboxConfig) -> dict[str, str]:
    md = config.metadata or api.PodSandboxMetadata()
    return {ANN_SANDBOX_ID: sandbox_id, ANN_SANDBOX_NAMESPACE: md.namespace, ANN_SANDBOX_UID: md.uid,
            ANN_SANDBOX_NAME: md.name}


def _annotate(spec: Spec, values: Mapping[str, str]) -> None:
    spec.setdefault("annotations", {}).update(values)


def _running_in_userns() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            fields = f.read().split()
    except OSError:
        return False
    return fields != ["0", "0", "4294967295"]


def _sec_ctx_privileged(config: api.PodSandboxConfig) -> bool:
    return bool(config.linux and config.linux.security_context and config.linux.security_context.privileged)


def _check_userns(options: api.UserNamespace | None) -> None:
    """User namespaces: mode NODE (or none) is the host's; anything else is not supported here."""
    if options is None or options.mode == _NS.NODE:
        return
    if options.mode == _NS.POD:
        raise Unimplemented("user namespaces are not supported by this runtime (userns_options mode POD)")
    raise InvalidArgument(f"unsupported user namespace mode: {options.mode.name!r}")


def _oom_score_adj(value: int, restrict: bool) -> int:
    return security.clamp_oom_score_adj(value, restrict=restrict)


# -- mounts ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MountInfo:
    """One ``/proc/self/mountinfo`` line: mount point, optional fields, super options."""

    mountpoint: str
    optional: tuple[str, ...]
    fstype: str
    vfs_options: tuple[str, ...]


def _mountinfo() -> list[MountInfo]:
    with open("/proc/self/mountinfo") as f:
        text = f.read()
    out = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        out.append(MountInfo(mountpoint=unescape_mountinfo(fields[4]), optional=tuple(fields[6:sep]),
                             fstype=fields[sep + 1] if len(fields) > sep + 1 else "",
                             vfs_options=tuple(fields[sep + 3].split(",")) if len(fields) > sep + 3 else ()))
    return out


def lookup_mount(path: str) -> MountInfo:
    """The mount ``path`` (symlinks resolved) lives on: the deepest mount point above it
    (containerd ``mount.Lookup``). NotFound when none matches."""
    path = os.path.realpath(path)
    best: MountInfo | None = None
    for m in _mountinfo():
        mp = m.mountpoint
        if path == mp or mp == "/" or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mountpoint):
                best = m
    if best is None:
        raise NotFound(f"failed to find the mount info for {path!r}")
    return best


def ensure_shared(path: str, lookup: Callable[[str], MountInfo] | None = None) -> None:
    """InvalidArgument unless the mount holding ``path`` is shared (bidirectional propagation)."""
    info = (lookup or lookup_mount)(path)
    if not any(o.startswith("shared:") for o in info.optional):
        raise InvalidArgument(f"path {path!r} is mounted on {info.mountpoint!r} but it is not a shared mount")


def ensure_shared_or_slave(path: str, lookup: Callable[[str], MountInfo] | None = None) -> None:
    """InvalidArgument unless the mount holding ``path`` is shared or a slave (host-to-container)."""
    info = (lookup or lookup_mount)(path)
    if not any(o.startswith(("shared:", "master:")) for o in info.optional):
        raise InvalidArgument(f"path {path!r} is mounted on {info.mountpoint!r} but it is not a shared or "
                              "slave mount")


def _id_mappings(mappings: Sequence[api.IdMapping]) -> list[dict[str, int]]:
    return [{"containerID": m.container_id, "hostID": m.host_id, "size": m.length} for m in mappings]


def _cgroup_mount(spec: Spec, writable: bool = False) -> dict[str, Any]:
    options = ["nosuid", "noexec", "nodev", "relatime", "rw" if writable else "ro"]
    has_cgroupns = any(n.get("type") == "cgroup" for n in _linux(spec).get("namespaces") or [])
    if not has_cgroupns:
        try:
            host = lookup_mount("/sys/fs/cgroup")
        except (OSError, NotFound):
            host = None
        if host is not None and host.mountpoint == "/sys/fs/cgroup":
            options += [o for o in host.vfs_options if o in ("nsdelegate", "memory_recursiveprot")]
    return {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": options}


def _with_mounts(spec: Spec, config: api.ContainerConfig, extra: Sequence[api.Mount],
                 features: api.RuntimeHandlerFeatures | None,
                 lookup: Callable[[str], MountInfo] | None = None) -> None:
    """containerd ``WithMounts``: CRI mounts (winning over ``extra`` on the same destination),
    sorted by depth, over the default mounts (a supplied ``/dev`` hides every default under it),
    plus a read-only cgroup mount. Bind sources are created when missing and resolved."""
    cri_mounts = list(config.mounts)
    cri_dests = {_clean(m.container_path) for m in cri_mounts}
    mounts = cri_mounts + [e for e in extra if _clean(e.container_path) not in cri_dests]
    mounts.sort(key=lambda m: _clean(m.container_path).count("/"))  # stable, as sort.Stable

    defaults = [*(spec.get("mounts") or []), _cgroup_mount(spec)]
    supplied = {_clean(m.container_path) for m in mounts}
    kept = []
    for m in defaults:
        dst = _clean(m.get("destination", ""))
        if dst in supplied:
            continue
        if "/dev" in supplied and dst.startswith("/dev/"):
            continue
        kept.append(m)
    spec["mounts"] = kept
    linux = _linux(spec)

    for mount in mounts:
        if mount.image is not None and mount.image.image:
            raise Unimplemented("image volume mounts are not supported "
                                f"(containerPath={mount.container_path!r})")
        dst, src = mount.container_path, mount.host_path
        try:
            os.stat(src)
        except FileNotFoundError:
            try:
                os.makedirs(src, 0o755, exist_ok=True)
            except OSError as e:
                raise InvalidArgument(f"failed to mkdir {src!r}: {e}") from None
        except OSError as e:
            raise InvalidArgument(f"failed to stat {src!r}: {e}") from None
        src = os.path.realpath(src)
        options = ["rbind"]
        if mount.propagation == _PROP.PROPAGATION_PRIVATE:
            options.append("rprivate")
        elif mount.propagation == _PROP.PROPAGATION_BIDIRECTIONAL:
            ensure_shared(src, lookup)
            options.append("rshared")
            linux["rootfsPropagation"] = "rshared"
        elif mount.propagation == _PROP.PROPAGATION_HOST_TO_CONTAINER:
            ensure_shared_or_slave(src, lookup)
            options.append("rslave")
            if linux.get("rootfsPropagation") not in ("rshared", "rslave"):
                linux["rootfsPropagation"] = "rslave"
        else:
            log.warning("unknown propagation mode for hostPath %r", mount.host_path)
            options.append("rprivate")
        if mount.readonly:
            if mount.recursive_read_only:
                if features is None or not features.recursive_read_only_mounts:
                    raise InvalidArgument("RROUnsupported: runtime handler does not support recursive "
                                          f"read-only mounts (hostPath={mount.host_path!r})")
                if mount.propagation != _PROP.PROPAGATION_PRIVATE:
                    raise InvalidArgument("recursive read-only mount needs private propagation, got "
                                          f"{mount.propagation.name!r} (hostPath={mount.host_path!r})")
                options.append("rro")
            else:
                options.append("ro")
        else:
            if mount.recursive_read_only:
                raise InvalidArgument("recursive read-only mount conflicts with RW mount "
                                      f"(hostPath={mount.host_path!r})")
            options.append("rw")
        entry: dict[str, Any] = {"destination": dst, "type": "bind", "source": src, "options": options}
        if mount.uid_mappings:
            entry["uidMappings"] = _id_mappings(mount.uid_mappings)
        if mount.gid_mappings:
            entry["gidMappings"] = _id_mappings(mount.gid_mappings)
        spec["mounts"].append(entry)


def _in_cri_mounts(dst: str, mounts: Sequence[api.Mount]) -> bool:
    return any(_clean(m.container_path) == _clean(dst) for m in mounts)


def container_mounts(config: api.ContainerConfig, files: SandboxFiles) -> list[api.Mount]:
    """The sandbox's files a container gets (containerd ``linuxContainerMounts``): /etc/hostname,
    /etc/hosts, /etc/resolv.conf (read-only with a read-only rootfs) and /dev/shm (the host's with
    IPC mode NODE), each when it exists on the host and no CRI mount covers it."""
    sc = _container_sc(config)
    ro = sc.readonly_rootfs
    userns = sc.namespace_options.userns_options if sc.namespace_options is not None else None
    uids = list(userns.uids) if userns is not None else []
    gids = list(userns.gids) if userns is not None else []
    out = []
    for dst, host in ((ETC_HOSTNAME, files.hostname), (ETC_HOSTS, files.hosts),
                      (RESOLV_CONF, files.resolv_conf)):
        if not _in_cri_mounts(dst, config.mounts) and os.path.exists(host):
            out.append(api.Mount(container_path=dst, host_path=host, readonly=ro, selinux_relabel=True,
                                 uid_mappings=list(uids), gid_mappings=list(gids)))
    if not _in_cri_mounts(DEV_SHM, config.mounts):
        shm = files.shm
        if sc.namespace_options and sc.namespace_options.ipc == _NS.NODE:
            shm = DEV_SHM
        if os.path.exists(shm):
            out.append(api.Mount(container_path=DEV_SHM, host_path=shm, readonly=False,
                                 selinux_relabel=shm != DEV_SHM))
    return out


def image_volume_mounts(config: api.ContainerConfig, image_config: Mapping[str, Any],
                        container_root_dir: str) -> list[api.Mount]:
    """Anonymous volumes for the image's ``Volumes`` (containerd ``volumeMounts``).

    One ``<container_root_dir>/volumes/<random id>`` host dir per volume not already
    covered by a CRI mount; a relative target is made absolute and every target is
    cleaned, so ``..`` cannot climb out (``../../etc`` → ``/etc``); an empty target or
    one that cleans to ``/`` is dropped (it would hide the whole rootfs). Pass the
    result as ``extra_mounts`` to :func:`container_spec` (which creates the dirs);
    copying what the image holds at those paths into them (containerd ``WithVolumes``)
    is the caller's, see :func:`populate_volumes`.
    """
    volumes = image_config_of(image_config).get("Volumes") or {}
    out = []
    seen: set[str] = set()
    uids = gids = []
    sc = _container_sc(config)
    if sc.namespace_options and sc.namespace_options.userns_options:
        uids = list(sc.namespace_options.userns_options.uids)
        gids = list(sc.namespace_options.userns_options.gids)
    for raw in sorted(volumes):
        if not isinstance(raw, str) or not raw.strip():
            log.warning("ignoring image volume with an empty target")
            continue
        dst = posixpath.normpath(posixpath.join("/", raw))
        if dst == "/" or "\x00" in dst:
            log.warning("ignoring image volume %r: not a usable target", raw)
            continue
        if _in_cri_mounts(dst, config.mounts) or dst in seen:
            continue
        seen.add(dst)
        src = os.path.join(container_root_dir, "volumes", secrets.token_hex(32))
        out.append(api.Mount(container_path=dst, host_path=src, selinux_relabel=True,
                             uid_mappings=uids, gid_mappings=gids))
    return out


def populate_volumes(rootfs_dir: str, mounts: Sequence[api.Mount]) -> None:
    """Copy what the image holds at each volume's target into its (empty) host dir, keeping
    ownership and modes (containerd ``WithVolumes``/``copyExistingContents``). ``rootfs_dir``:
    the container's rootfs mounted read-only. Targets are resolved inside the rootfs."""
    import shutil

    for m in mounts:
        src = _resolve_in_root(rootfs_dir, m.container_path)
        if src is None or not os.path.isdir(src):
            continue
        os.makedirs(m.host_path, 0o755, exist_ok=True)
        if os.listdir(m.host_path):
            raise InvalidArgument(f"volume at {m.host_path!r} is not initially empty")
        shutil.copytree(src, m.host_path, symlinks=True, dirs_exist_ok=True)
        for root, dirs, names in os.walk(src):
            rel = os.path.relpath(root, src)
            for name in [".", *dirs, *names]:
                s = os.path.normpath(os.path.join(root, name))
                d = os.path.normpath(os.path.join(m.host_path, rel, name))
                st = os.lstat(s)
                os.lchown(d, st.st_uid, st.st_gid)
                if not stat.S_ISLNK(st.st_mode):
                    os.chmod(d, stat.S_IMODE(st.st_mode))


def _resolve_in_root(root: str, path: str) -> str | None:
    """``path`` inside ``root`` with symlinks followed without leaving it (``fs.RootPath``);
    None when it is missing, unreadable or a symlink loop."""
    try:
        return DirRootFS(root)._resolve(path)
    except OSError:
        return None


# -- devices --------------------------------------------------------------------------------------

_SKIPPED_DEV_DIRS = ("pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev")


def device_from_path(path: str) -> dict[str, Any] | None:
    """A runtime-spec ``linux.devices`` entry for the node at ``path`` (not followed), None
    when it is not a block/char device or a FIFO (containerd ``DeviceFromPath``)."""
    st = os.lstat(path)
    if stat.S_ISBLK(st.st_mode):
        type_ = "b"
    elif stat.S_ISCHR(st.st_mode):
        type_ = "c"
    elif stat.S_ISFIFO(st.st_mode):
        type_ = "p"
    else:
        return None
    return {"path": path, "type": type_, "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
            "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}


def get_devices(path: str, container_path: str = "") -> list[dict[str, Any]]:
    """Device nodes at ``path`` (one, or every one under a folder, recursively) renamed under
    ``container_path`` (containerd ``getDevices``). NotFound when ``path`` does not exist,
    InvalidArgument when a single path is not a device."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"error stating device path: {path!r} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        dev = device_from_path(path)
        if dev is None:
            raise InvalidArgument(f"get device path: {path!r} containerPath: {container_path!r} error: "
                                  "not a device node")
        if container_path:
            dev["path"] = container_path
        return [dev]
    in_userns = _running_in_userns()
    out: list[dict[str, Any]] = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        full = os.path.join(path, entry.name)
        if entry.is_dir(follow_symlinks=False):
            if entry.name in _SKIPPED_DEV_DIRS:
                continue
            sub_cp = os.path.join(container_path, entry.name) if container_path else ""
            try:
                out += get_devices(full, sub_cp)
            except PermissionError:
                if not in_userns:
                    raise
            continue
        if entry.name == "console":
            continue
        try:
            dev = device_from_path(full)
        except FileNotFoundError:
            continue
        except PermissionError:
            if in_userns:
                continue
            raise
        if dev is None or dev["type"] == "p":
            continue
        if container_path:
            dev["path"] = os.path.join(container_path, entry.name)
        out.append(dev)
    return out


def _with_devices(spec: Spec, config: api.ContainerConfig, ownership_from_sc: bool) -> None:
    """containerd CRI ``WithDevices``: each requested device (symlinks resolved; a folder gives
    every node under it) in ``linux.devices`` and allowed in the device cgroup with its
    permissions; with ``device_ownership_from_security_context`` owned by run_as_user/group."""
    linux = _linux(spec)
    devices = linux.setdefault("devices", [])
    rules = _resources(spec).setdefault("devices", [])
    first = len(devices)
    for device in config.devices:
        path = os.path.realpath(device.host_path)
        for dev in get_devices(path, device.container_path):
            devices.append(dev)
            rules.append({"allow": True, "type": dev["type"], "major": dev["major"], "minor": dev["minor"],
                          "access": device.permissions})
    if ownership_from_sc:
        sc = _container_sc(config)
        uid = sc.run_as_user.value & 0xFFFFFFFF if sc.run_as_user is not None else 0
        gid = sc.run_as_group.value & 0xFFFFFFFF if sc.run_as_group is not None else 0
        for dev in devices[first:]:
            if uid:
                dev["uid"] = uid
            if gid:
                dev["gid"] = gid
    if not devices:
        linux.pop("devices", None)


# -- capabilities, privileged -----------------------------------------------------------------------

def _set_caps(spec: Spec, caps: Sequence[str]) -> None:
    """``oci.WithCapabilities``: bounding/effective/permitted; inheritable filtered (or cleared)."""
    c = _caps(spec)
    for key in ("bounding", "effective", "permitted"):
        c[key] = list(caps)
    if not caps:
        c.pop("inheritable", None)
    elif c.get("inheritable"):
        c["inheritable"] = [x for x in c["inheritable"] if x in caps]


def _with_capabilities(spec: Spec, sc: api.LinuxContainerSecurityContext, all_caps: Sequence[str]) -> None:
    """containerd CRI ``WithCapabilities``: ``ALL`` in add/drop first, then the others
    (``CAP_`` prefixed, upper-cased)."""
    caps = sc.capabilities
    if caps is None:
        return
    add = list(caps.add_capabilities)
    drop = list(caps.drop_capabilities)
    if any(x.upper() == "ALL" for x in add):
        _set_caps(spec, all_caps)
    if any(x.upper() == "ALL" for x in drop):
        _set_caps(spec, [])
    c = _caps(spec)
    for name in ("CAP_" + x.upper() for x in add if x.upper() != "ALL"):
        for key in ("bounding", "effective", "permitted"):
            current = c.setdefault(key, [])
            if name not in current:
                current.append(name)
    dropped = {"CAP_" + x.upper() for x in drop if x.upper() != "ALL"}
    if dropped:
        for key in ("bounding", "effective", "permitted", "inheritable"):
            if key in c:
                c[key] = [x for x in c[key] if x not in dropped]


def _with_privileged(spec: Spec, all_caps: Sequence[str]) -> None:
    """``oci.WithPrivileged``: the daemon's capabilities, no masked/read-only paths, writable sysfs
    and cgroupfs, no SELinux label, AppArmor profile or seccomp filter."""
    _set_caps(spec, all_caps)
    linux = _linux(spec)
    linux.pop("maskedPaths", None)
    linux.pop("readonlyPaths", None)
    for m in spec.get("mounts") or []:
        if m.get("type") in ("sysfs", "cgroup"):
            m["options"] = ["rw" if o == "ro" else o for o in m.get("options") or []]
    p = _process(spec)
    p.pop("selinuxLabel", None)
    p.pop("apparmorProfile", None)
    linux.pop("seccomp", None)


# -- resources ------------------------------------------------------------------------------------

def swap_controller_available() -> bool:
    """containerd ``SwapControllerAvailable``: memory.memsw (v1) or this cgroup's memory.swap.max (v2)."""
    from aiocontainerd import cgroups

    if cgroups.mode() != "v2":
        return os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    rel = line[3:].strip().lstrip("/")
                    return os.path.exists(os.path.join("/sys/fs/cgroup", rel, "memory.swap.max"))
    except OSError:
        pass
    return False


def hugetlb_controller_present() -> bool:
    """Whether the hugetlb cgroup controller exists (v1 hierarchy or v2 root controllers)."""
    from aiocontainerd import cgroups

    if cgroups.mode() != "v2":
        return os.path.isdir("/sys/fs/cgroup/hugetlb")
    try:
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            return "hugetlb" in f.read().split()
    except OSError:
        return False


def linux_resources(resources: api.LinuxContainerResources | None, *, tolerate_missing_hugetlb: bool = True,
                    disable_hugetlb: bool = True, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """CRI resources as runtime-spec ``linux.resources`` (containerd ``WithResources``), merged
    into a copy of ``current``. Zero values are unset; memory swap = limit when no swap limit is
    given and the swap controller exists; hugepage limits unless ``disable_hugetlb``
    (FailedPrecondition-like InvalidArgument when requested but the controller is missing and
    not tolerated); ``unified`` copied for cgroup v2. Also what UpdateContainerResources needs."""
    out: dict[str, Any] = copy.deepcopy(dict(current or {}))
    if resources is None:
        return out
    cpu = out.setdefault("cpu", {})
    memory = out.setdefault("memory", {})
    if resources.cpu_period:
        cpu["period"] = resources.cpu_period & 0xFFFFFFFFFFFFFFFF
    if resources.cpu_quota:
        cpu["quota"] = resources.cpu_quota
    if resources.cpu_shares:
        cpu["shares"] = resources.cpu_shares & 0xFFFFFFFFFFFFFFFF
    if resources.cpuset_cpus:
        cpu["cpus"] = resources.cpuset_cpus
    if resources.cpuset_mems:
        cpu["mems"] = resources.cpuset_mems
    limit, swap = resources.memory_limit_in_bytes, resources.memory_swap_limit_in_bytes
    if limit or swap:
        swap_ok = swap_controller_available()
        if limit:
            memory["limit"] = limit
            if not swap and swap_ok:
                memory["swap"] = limit
        if swap and swap_ok:
            memory["swap"] = swap
    if not disable_hugetlb and resources.hugepage_limits:
        if hugetlb_controller_present():
            out.setdefault("hugepageLimits", []).extend(
                {"pageSize": h.page_size, "limit": h.limit} for h in resources.hugepage_limits)
        elif not tolerate_missing_hugetlb:
            raise InvalidArgument("huge pages limits are specified but hugetlb cgroup controller is "
                                  "missing. Please set tolerate_missing_hugetlb_controller to `true` "
                                  "to ignore this error")
        else:
            log.warning("hugetlb cgroup controller is absent. skipping huge pages limits")
    if resources.unified:
        out.setdefault("unified", {}).update(resources.unified)
    return out


# -- process ---------------------------------------------------------------------------------------

def process_args(config: api.ContainerConfig, image_config: Mapping[str, Any]) -> list[str]:
    """The command line (containerd CRI ``WithProcessArgs``, moby's rules).

    Without a request ``command``: ``args`` or else the image ``Cmd``, after the image
    ``Entrypoint`` (unless it is the single empty string ``[""]``). With a ``command``:
    ``command + args`` (the image is not consulted). InvalidArgument when nothing is left.
    """
    image = image_config_of(image_config)
    command, args = list(config.command), list(config.args)
    if not command:
        if not args:
            args = list(image.get("Cmd") or [])
        entrypoint = list(image.get("Entrypoint") or [])
        if entrypoint != [""]:
            command = entrypoint
    if not command and not args:
        raise InvalidArgument("no command specified")
    return command + args


def _env_value(kv: api.KeyValue) -> str:
    value = kv.value
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    return f"{kv.key}={value}"


def _container_sc(config: api.ContainerConfig) -> api.LinuxContainerSecurityContext:
    if config.linux is not None and config.linux.security_context is not None:
        return config.linux.security_context
    return api.LinuxContainerSecurityContext()


def _sandbox_sc(config: api.PodSandboxConfig) -> api.LinuxSandboxSecurityContext:
    if config.linux is not None and config.linux.security_context is not None:
        return config.linux.security_context
    return api.LinuxSandboxSecurityContext()


def _ns_options(options: api.NamespaceOption | None) -> api.NamespaceOption:
    return options if options is not None else api.NamespaceOption()


def _same_userns(a: api.UserNamespace | None, b: api.UserNamespace | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (a.mode == b.mode and [bytes(x) for x in a.uids] == [bytes(x) for x in b.uids]
            and [bytes(x) for x in a.gids] == [bytes(x) for x in b.gids])


def _apply_seccomp(spec: Spec, sc: api.LinuxSandboxSecurityContext | api.LinuxContainerSecurityContext,
                   cri_config: CRIConfig) -> None:
    """``linux.seccomp`` from the security context (its profile, else the legacy path), bounded
    by the spec's capabilities; nothing when unconfined or privileged."""
    profile = sc.seccomp if sc.seccomp is not None else seccomp_.security_profile(
        sc.seccomp_profile_path, cri_config.unset_seccomp_profile)
    seccomp = seccomp_.seccomp_for(profile, privileged=sc.privileged,
                                   bounding_caps=_caps(spec).get("bounding") or [])
    if seccomp is not None:
        _linux(spec)["seccomp"] = seccomp


# -- sandbox -------------------------------------------------------------------------------------

def sandbox_spec(sandbox_id: str, config: api.PodSandboxConfig, image_config: Mapping[str, Any], *,
                 netns_path: str, files: SandboxFiles, cri_config: CRIConfig,
                 runtime_handler: str = "", image_name: str = "",
                 rootfs: RootFS | str | None = None) -> Spec:
    """The pause container's spec.

    ``netns_path``: the pod's pinned network namespace ("" for host network or to let
    the runtime make one); ``files``: :meth:`SandboxFiles.of` the record's dirs (its
    ``shm`` and ``resolv_conf`` are bind-mounted read-only; the host's ``/dev/shm`` with
    IPC mode NODE); ``image_name``: the sandbox image reference (annotations
    ``io.kubernetes.cri.podsandbox.image-name`` and ``io.kubernetes.cri.image-name``);
    ``rootfs``: a reader of the pause rootfs (or its path) for a named image USER.

    The spec: args = image Entrypoint + Cmd, image Env and WorkingDir, read-only rootfs,
    ``hostname``, namespaces (network joined at ``netns_path``; network+UTS, PID, IPC of the
    host for mode NODE), validated sysctls (+ ``enable_unprivileged_ports``/``_icmp``),
    cpu shares 2, oom_score_adj -998 (clamped, :func:`security.clamp_oom_score_adj`),
    cgroups path under ``cgroup_parent``, seccomp from the pod security context, user from
    ``run_as_user``/``run_as_group`` or the image, supplemental groups, the pod's
    ``io.kubernetes.cri.*`` annotations and the handler's ``pod_annotations`` passthrough.

    Errors: InvalidArgument (no entrypoint/cmd in the image, bad sysctls, gid without uid,
    USER out of range, bad seccomp profile), NotFound (unknown user name, handler),
    Unimplemented (user namespaces), FailedPrecondition (user name but no rootfs).
    """
    runtime = cri_config.runtime(runtime_handler)
    image = image_config_of(image_config)
    sc = _sandbox_sc(config)
    ns = _ns_options(sc.namespace_options)
    linux_cfg = config.linux or api.LinuxPodSandboxConfig()
    spec = oci.default_spec(K8S_NAMESPACE, sandbox_id)
    ctx = oci.SpecContext(K8S_NAMESPACE, sandbox_id, _rootfs(rootfs))

    _without_mounts(spec, "/run")
    _without_default_security(spec)
    spec["root"] = {"path": RELATIVE_ROOTFS_PATH, "readonly": True}
    _set_env(spec, list(image.get("Env") or []))
    if config.hostname:
        spec["hostname"] = config.hostname
    if image.get("WorkingDir"):
        _process(spec)["cwd"] = image["WorkingDir"]
    entrypoint, cmd = list(image.get("Entrypoint") or []), list(image.get("Cmd") or [])
    if not entrypoint and not cmd:
        raise InvalidArgument("invalid empty entrypoint and cmd in image config")
    _process(spec)["args"] = entrypoint + cmd
    if linux_cfg.cgroup_parent:
        _linux(spec)["cgroupsPath"] = cgroups_path(linux_cfg.cgroup_parent, sandbox_id)

    host_network = ns.network == _NS.NODE
    if host_network:
        _without_namespace(spec, "network")
        _without_namespace(spec, "uts")
    else:
        _set_namespace(spec, "network", netns_path)
    if ns.pid == _NS.NODE:
        _without_namespace(spec, "pid")
    if ns.ipc == _NS.NODE:
        _without_namespace(spec, "ipc")
    _check_userns(ns.userns_options)

    shm = DEV_SHM if ns.ipc == _NS.NODE else files.shm
    _without_mounts(spec, DEV_SHM)
    bind_ro = ["rbind", "ro", "nosuid", "nodev", "noexec"]
    spec["mounts"] += [
        {"destination": DEV_SHM, "type": "bind", "source": shm, "options": list(bind_ro)},
        {"destination": RESOLV_CONF, "type": "bind", "source": files.resolv_conf, "options": list(bind_ro)},
    ]
    _add_supplemental_groups(spec, sc.supplemental_groups)

    sysctls = dict(linux_cfg.sysctls)
    if not host_network:
        if cri_config.enable_unprivileged_ports and "net.ipv4.ip_unprivileged_port_start" not in sysctls:
            sysctls["net.ipv4.ip_unprivileged_port_start"] = "0"
        if cri_config.enable_unprivileged_icmp and "net.ipv4.ping_group_range" not in sysctls \
                and not _running_in_userns():
            sysctls["net.ipv4.ping_group_range"] = "0 2147483647"
    sysctls = security.validate_sysctls(sysctls, host_network=host_network, host_ipc=ns.ipc == _NS.NODE)
    if sysctls:
        _linux(spec).setdefault("sysctl", {}).update(sysctls)

    _resources(spec).setdefault("cpu", {})["shares"] = DEFAULT_SANDBOX_CPU_SHARES
    annotations: dict[str, str] = {}
    if linux_cfg.resources is not None:
        res = linux_cfg.resources
        annotations.update({ANN_SANDBOX_CPU_PERIOD: str(res.cpu_period),
                            ANN_SANDBOX_CPU_QUOTA: str(res.cpu_quota),
                            ANN_SANDBOX_CPU_SHARES: str(res.cpu_shares),
                            ANN_SANDBOX_MEMORY: str(res.memory_limit_in_bytes)})
    _process(spec)["oomScoreAdj"] = _oom_score_adj(DEFAULT_SANDBOX_OOM_ADJ, cri_config.restrict_oom_score_adj)
    annotations.update(security.passthrough_annotations(config.annotations, runtime.pod_annotations))
    annotations.update(_sandbox_annotations(sandbox_id, config))
    annotations.update({ANN_SANDBOX_LOG_DIR: config.log_directory, ANN_SANDBOX_IMAGE_NAME: image_name,
                        ANN_IMAGE_NAME: image_name, ANN_CONTAINER_TYPE: CONTAINER_TYPE_SANDBOX})
    _annotate(spec, annotations)

    if sc.privileged:  # sandbox_run.go: a privileged pod's /sys is writable
        for m in spec["mounts"]:
            if _clean(m.get("destination", "")) == "/sys":
                opts = m.get("options") or []
                if "ro" in opts:
                    opts[opts.index("ro")] = "rw"
                break

    # sandboxContainerSpecOpts: seccomp, then the user
    _apply_seccomp(spec, sc, cri_config)
    userstr = security.generate_user_string("", sc.run_as_user, sc.run_as_group) or image.get("User") or ""
    if userstr:
        _set_user(spec, ctx, userstr)
    return spec


# -- container -------------------------------------------------------------------------------------

def container_spec(container_id: str, sandbox_id: str, config: api.ContainerConfig,
                   sandbox_config: api.PodSandboxConfig, image_config: Mapping[str, Any], *,
                   sandbox_pid: int, files: SandboxFiles, cri_config: CRIConfig,
                   runtime_handler: str = "", image_name: str = "",
                   target_pid: int | None = None, extra_mounts: Sequence[api.Mount] = (),
                   rootfs: RootFS | str | None = None,
                   features: api.RuntimeHandlerFeatures | None = None,
                   hostname: str | None = None) -> Spec:
    """An application container's spec.

    ``sandbox_pid``: the pause task's pid (the container joins
    ``/proc/<pid>/ns/{net,ipc,uts}`` and, unless its PID mode is CONTAINER,
    ``/proc/<pid>/ns/pid``); ``target_pid``: the target container's pid for PID mode
    TARGET (required then); ``image_name``: the user-specified image name or the
    resolved reference (annotation ``io.kubernetes.cri.image-name``); ``extra_mounts``:
    e.g. :func:`image_volume_mounts`; ``rootfs``: a reader of the container's rootfs
    (``aiocontainerd.oci.rootfs.from_mounts(snapshot mounts)``) or its path, for USER
    names and groups from ``/etc/passwd`` / ``/etc/group``; ``features``: the handler's
    features (recursive read-only mounts need ``recursive_read_only_mounts``);
    ``hostname``: the node's name for ``HOSTNAME`` when the pod has none (default:
    this host's).

    Built as containerd's ``buildLinuxSpec`` then ``platformSpecOpts``: args
    (:func:`process_args`), env (PATH default, ``HOSTNAME``, image Env, request envs —
    later wins), cwd, tty, cgroup namespace (cgroup v2, not privileged), mounts
    (:func:`container_mounts` + ``extra_mounts`` + CRI mounts with propagation and
    read-only/rro; a read-only cgroupfs), masked/read-only paths (empty unless the
    request lists them), devices, capabilities, privileged (daemon's caps, every host
    device, all devices allowed unless ``privileged_without_host_devices``), no ambient
    caps, no_new_privs, read-only rootfs, resources (:func:`linux_resources`), cgroups
    path, annotation passthrough, oom_score_adj (clamped), pod namespaces, supplemental
    groups, ``io.kubernetes.cri.*`` annotations; then the user (run_as_username /
    run_as_user[:run_as_group] / image USER), groups from /etc/group (policy Merge),
    AppArmor and seccomp (after the capabilities, so CAP_SYS_ADMIN etc. unlock calls).

    Errors (``aiocontainerd.errors``): InvalidArgument (no command, propagation on a
    private host mount, rro unsupported or misused, privileged container in a
    non-privileged pod, USER out of range, gid without user, bad seccomp/apparmor
    profile, unknown supplemental groups policy, PID TARGET without ``target_pid``,
    userns config differing from the pod's), NotFound (unknown user/group name, missing
    device), Unimplemented (user namespaces, CDI devices, image-volume mounts),
    FailedPrecondition (user name but no rootfs).
    """
    runtime = cri_config.runtime(runtime_handler)
    image = image_config_of(image_config)
    sc = _container_sc(config)
    ns = _ns_options(sc.namespace_options)
    sandbox_sc = _sandbox_sc(sandbox_config)
    ctx = oci.SpecContext(K8S_NAMESPACE, container_id, _rootfs(rootfs))
    spec = _base_spec(container_id, runtime)
    all_caps = security.current_capabilities()

    _without_mounts(spec, "/run")
    if not runtime.base_runtime_spec:
        _without_default_security(spec)
    spec.setdefault("root", {})["path"] = RELATIVE_ROOTFS_PATH
    p = _process(spec)
    p["args"] = process_args(config, image)
    p.pop("commandLine", None)
    _set_env(spec, list(oci.DEFAULT_ENV))
    p["noNewPrivileges"] = False
    if config.working_dir:
        p["cwd"] = config.working_dir
    elif image.get("WorkingDir"):
        p["cwd"] = image["WorkingDir"]
    if config.tty:
        p["terminal"] = True
        p["env"] = [*(p.get("env") or []), "TERM=xterm"]
    host = sandbox_config.hostname or hostname or socket.gethostname()
    _set_env(spec, [f"HOSTNAME={host}"])
    _set_env(spec, [*(image.get("Env") or []), *(_env_value(kv) for kv in config.envs)])

    from aiocontainerd import cgroups

    if cgroups.mode() == "v2" and not sc.privileged:
        _set_namespace(spec, "cgroup")

    mounts = container_mounts(config, files) + list(extra_mounts)
    _with_mounts(spec, config, mounts, features)

    if not cri_config.disable_proc_mount:
        linux = _linux(spec)
        linux["maskedPaths"] = list(sc.masked_paths)
        linux["readonlyPaths"] = list(sc.readonly_paths)

    _with_devices(spec, config, cri_config.device_ownership_from_security_context)
    _with_capabilities(spec, sc, all_caps)
    if sc.privileged:
        if not sandbox_sc.privileged:
            raise InvalidArgument("no privileged container allowed in sandbox")
        _with_privileged(spec, all_caps)
        if not runtime.privileged_without_host_devices:
            devices = _linux(spec).setdefault("devices", [])
            devices.extend(get_devices("/dev"))
            _resources(spec)["devices"] = [{"allow": True, "access": "rwm"}]
    _caps(spec).pop("ambient", None)
    if sc.no_new_privs:
        p["noNewPrivileges"] = True
    if sc.readonly_rootfs:
        spec["root"]["readonly"] = True

    resources = config.linux.resources if config.linux is not None else None
    _linux(spec)["resources"] = linux_resources(
        resources, tolerate_missing_hugetlb=cri_config.tolerate_missing_hugetlb_controller,
        disable_hugetlb=cri_config.disable_hugetlb_controller, current=_resources(spec))
    parent = sandbox_config.linux.cgroup_parent if sandbox_config.linux is not None else ""
    if parent:
        _linux(spec)["cgroupsPath"] = cgroups_path(parent, container_id)

    annotations: dict[str, str] = {}
    annotations.update(security.passthrough_annotations(sandbox_config.annotations, runtime.pod_annotations))
    annotations.update(security.passthrough_annotations(config.annotations, runtime.container_annotations))

    pid_target = sandbox_pid
    if ns.pid == _NS.TARGET:
        if not target_pid:
            raise InvalidArgument(f"invalid target container: no pid for target {ns.target_id!r}")
        pid_target = target_pid
    if not _same_userns(_ns_options(sandbox_sc.namespace_options).userns_options, ns.userns_options):
        raise InvalidArgument("user namespace config for sandbox is different from container")
    _check_userns(ns.userns_options)

    if resources is not None:
        p["oomScoreAdj"] = _oom_score_adj(resources.oom_score_adj, cri_config.restrict_oom_score_adj)
    _set_namespace(spec, "network", f"/proc/{sandbox_pid}/ns/net")
    _set_namespace(spec, "ipc", f"/proc/{sandbox_pid}/ns/ipc")
    _set_namespace(spec, "uts", f"/proc/{sandbox_pid}/ns/uts")
    if ns.pid != _NS.CONTAINER:
        _set_namespace(spec, "pid", f"/proc/{pid_target}/ns/pid")
    _add_supplemental_groups(spec, sc.supplemental_groups)

    md = config.metadata or api.ContainerMetadata()
    annotations.update(_sandbox_annotations(sandbox_id, sandbox_config))
    annotations.update({ANN_CONTAINER_NAME: md.name, ANN_IMAGE_NAME: image_name,
                        ANN_CONTAINER_TYPE: CONTAINER_TYPE_CONTAINER})
    _annotate(spec, annotations)

    # platformSpecOpts: the user, then containerSpecOpts (groups, AppArmor, seccomp, CDI)
    userstr = security.generate_user_string(sc.run_as_username, sc.run_as_user, sc.run_as_group) \
        or image.get("User") or ""
    if userstr:
        _set_user(spec, ctx, userstr)
    groups_user = "0"
    if sc.run_as_username:
        groups_user = sc.run_as_username
    elif sc.run_as_user is not None:
        groups_user = str(sc.run_as_user.value)
    elif image.get("User"):
        groups_user = image["User"].partition(":")[0]
    policy = sc.supplemental_groups_policy
    if policy == api.SupplementalGroupsPolicy.Merge:
        _add_additional_gids(spec, ctx, groups_user)
        _add_supplemental_groups(spec, sc.supplemental_groups)
    elif policy == api.SupplementalGroupsPolicy.Strict:
        _add_supplemental_groups(spec, sc.supplemental_groups)
    else:
        raise InvalidArgument("not implemented in this containerd release: "
                              f"SupplementalGroupsPolicy={int(policy)}")

    profile = security.apparmor_profile_for(sc.apparmor, sc.apparmor_profile, privileged=sc.privileged,
                                            enabled=security.apparmor_enabled(cri_config.disable_apparmor))
    if profile:
        p["apparmorProfile"] = profile
    _apply_seccomp(spec, sc, cri_config)
    if config.CDI_devices:
        names = ", ".join(d.name for d in config.CDI_devices)
        raise Unimplemented(f"CDI devices ({names}) requested but CDI is not supported")
    return spec


def spec_json(spec: Spec) -> bytes:
    """The spec as ``config.json`` bytes (compact JSON)."""
    return json.dumps(spec, separators=(",", ":")).encode()
