"""OCI runtime spec generation: containerd's default Linux spec and the options applied to it.

A spec is the runtime-spec ``config.json`` document as a JSON-shaped ``dict``
(:data:`Spec`), so fields this module does not know round-trip untouched.
:func:`default_spec` is containerd's ``populateDefaultUnixSpec`` (pkg/oci/spec.go):
root ``rootfs``; process cwd ``/``, uid/gid 0, the default capability set in
bounding/permitted/effective, ``RLIMIT_NOFILE`` 1024/1024, ``noNewPrivileges``;
the mounts /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys, /run; pid, ipc,
uts, mount and network namespaces; masked and read-only /proc and /sys paths;
a device cgroup denying everything; cgroups path ``/<namespace>/<id>``.

Options are containerd's ``SpecOpts``: callables ``opt(ctx, spec) -> None``
that edit the spec in place, applied in order by :func:`generate_spec`::

    spec = generate_spec("default", "c1",
                         with_image_config(image_config_json),
                         with_env(["DEBUG=1"]),
                         with_process_args("sh", "-c", "echo hi"),
                         rootfs=DirRootFS("/path/to/rootfs"))
    record_spec = to_any(spec)   # what the container record stores

``ctx`` (:class:`SpecContext`) carries the namespace, the container id and,
when one is available, a reader of the container's root filesystem
(:mod:`aiocontainerd.oci.rootfs`) used to resolve user and group names the
way containerd reads the snapshot's ``/etc/passwd`` and ``/etc/group``.
Options that need it and have none raise FailedPrecondition; bad input
(``USER a:b:c``, a mount flag without ``key=value``) raises InvalidArgument;
an unknown user name raises NotFound. Options may read files: run
:func:`generate_spec` in a thread when a rootfs is given.

The container record stores the spec as an ``Any`` of type URL
:data:`SPEC_TYPE_URL` holding the JSON (as containerd's typeurl registers
``specs.Spec``), so the real ``ctr containers info`` decodes it.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import os
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..errors import FailedPrecondition, InvalidArgument, NotFound
from .rootfs import DirRootFS, LayeredRootFS, RootFS, from_mounts

__all__ = [
    "CAPABILITIES", "DEFAULT_ENV", "DEFAULT_ROOTFS_PATH", "SPEC_TYPE_URL", "SPEC_VERSION", "DirRootFS",
    "LayeredRootFS",
    "RootFS", "Spec", "SpecContext", "SpecOpt", "apply_opts", "compose", "default_caps", "default_mounts",
    "default_spec", "from_any", "from_json", "from_mounts", "generate_spec", "marshal", "parse_mount",
    "replace_or_append_env", "to_any", "with_added_capabilities", "with_additional_gids",
    "with_all_devices_allowed", "with_annotations", "with_capabilities", "with_cgroup",
    "with_default_unix_devices", "with_dropped_capabilities", "with_env", "with_host_namespace",
    "with_hostname", "with_image_config", "with_linux_namespace", "with_masked_paths", "with_memory_limit",
    "with_mounts", "with_new_privileges", "with_privileged", "with_process_args", "with_process_cwd",
    "with_readonly_paths", "with_rlimit", "with_rootfs_path", "with_rootfs_readonly", "with_tty",
    "with_tty_size", "with_uidgid", "with_user", "with_user_id", "with_username", "without_mounts",
]

#: The runtime-spec document: ``config.json`` as parsed JSON.
Spec = dict[str, Any]
#: runtime-spec version written by containerd 1.6 (what runc 1.1 reads)
SPEC_VERSION = "1.0.2-dev"
#: type URL of a spec packed in a container record (typeurl's name for ``specs.Spec``)
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
DEFAULT_ROOTFS_PATH = "rootfs"
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
#: runc limits ids to int32 (containerd follows it)
MAX_ID = 2**31 - 1
RWM = "rwm"


@dataclasses.dataclass
class SpecContext:
    """What options may consult: the namespace and id of the container, and its root filesystem
    (None when neither a snapshot nor an absolute ``root.path`` can be read)."""

    namespace: str
    id: str
    rootfs: RootFS | None = None


SpecOpt = Callable[[SpecContext, Spec], None]


# -- defaults ------------------------------------------------------------------------------------

def default_caps() -> list[str]:
    """The capabilities containerd grants a non-privileged container."""
    return ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
            "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]


def _mount(dest: str, type_: str, source: str, options: Sequence[str]) -> dict[str, Any]:
    return {"destination": dest, "type": type_, "source": source, "options": list(options)}


def default_mounts() -> list[dict[str, Any]]:
    """containerd's default Linux mounts (pkg/oci/mounts.go), in its order."""
    dev_opts = ["nosuid", "strictatime", "mode=755", "size=65536k"]
    return [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", dev_opts),
        _mount("/dev/pts", "devpts", "devpts",
               ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        _mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        _mount("/run", "tmpfs", "tmpfs", dev_opts),
    ]


def default_spec(namespace: str, id: str) -> Spec:
    """containerd's default Linux spec for container ``id`` in ``namespace``.

    Raises InvalidArgument when ``namespace`` is empty (containerd requires one).
    """
    if not namespace:
        raise InvalidArgument("namespace is required")
    return {
        "ociVersion": SPEC_VERSION,
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {"bounding": default_caps(), "effective": default_caps(),
                             "permitted": default_caps()},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": DEFAULT_ROOTFS_PATH},
        "mounts": default_mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": RWM}]},
            "cgroupsPath": posixpath.join("/", namespace, id),
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/sys/devices/virtual/powercap",
                            "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def apply_opts(ctx: SpecContext, spec: Spec, *opts: SpecOpt) -> Spec:
    """Apply ``opts`` to ``spec`` in order (in place); returns ``spec``."""
    for opt in opts:
        opt(ctx, spec)
    return spec


def generate_spec(namespace: str, id: str, *opts: SpecOpt, rootfs: RootFS | None = None) -> Spec:
    """The default spec with ``opts`` applied (containerd's ``GenerateSpec``)."""
    spec = default_spec(namespace, id)
    return apply_opts(SpecContext(namespace, id, rootfs), spec, *opts)


def compose(*opts: SpecOpt) -> SpecOpt:
    """One option applying ``opts`` in order."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        apply_opts(ctx, spec, *opts)
    return opt


# -- serialisation -------------------------------------------------------------------------------

def marshal(spec: Spec) -> bytes:
    """The spec as compact JSON bytes (``config.json`` / the record's Any value)."""
    return json.dumps(spec, separators=(",", ":")).encode()


def from_json(data: bytes | str) -> Spec:
    """Parse a spec document. Raises InvalidArgument when it is not a JSON object."""
    try:
        spec = json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"invalid spec: {e}") from None
    if not isinstance(spec, dict):
        raise InvalidArgument("invalid spec: not a JSON object")
    return spec


def to_any(spec: Spec) -> Any:
    """The spec as the container record stores it: ``google.protobuf.Any`` of :data:`SPEC_TYPE_URL`."""
    from ..api.google.protobuf import Any as PbAny

    return PbAny(type_url=SPEC_TYPE_URL, value=marshal(spec))


def from_any(value: Any) -> Spec | None:
    """The spec in a record's ``Any`` (None when absent). Raises InvalidArgument for another type."""
    if value is None or not value.value:
        return None
    if value.type_url != SPEC_TYPE_URL:
        raise InvalidArgument(f"container spec has type {value.type_url!r}, not {SPEC_TYPE_URL}")
    return from_json(value.value)


# -- helpers ---------------------------------------------------------------------------------------

def _process(spec: Spec) -> dict[str, Any]:
    return spec.setdefault("process", {})


def _user(spec: Spec) -> dict[str, Any]:
    user = _process(spec).setdefault("user", {})
    user.setdefault("uid", 0)
    user.setdefault("gid", 0)
    return user


def _linux(spec: Spec) -> dict[str, Any]:
    return spec.setdefault("linux", {})


def _resources(spec: Spec) -> dict[str, Any]:
    return _linux(spec).setdefault("resources", {})


def _caps(spec: Spec) -> dict[str, Any]:
    return _process(spec).setdefault("capabilities", {})


def _ensure_additional_gids(spec: Spec) -> None:
    """The primary gid first in ``additionalGids`` unless already listed (containerd does this)."""
    user = _user(spec)
    gids = list(user.get("additionalGids") or [])
    if user["gid"] not in gids:
        gids.insert(0, user["gid"])
    user["additionalGids"] = gids


def replace_or_append_env(defaults: Iterable[str], overrides: Iterable[str]) -> list[str]:
    """``defaults`` with ``overrides`` applied by key: ``K=V`` replaces or appends, a bare ``K``
    removes ``K`` (containerd's ``replaceOrAppendEnvValues``)."""
    results: list[str | None] = []
    index: dict[str, int] = {}
    for i, e in enumerate(defaults):
        results.append(e)
        index[e.partition("=")[0]] = i
    for value in overrides:
        key, sep, _ = value.partition("=")
        if not sep:
            if key in index:
                results[index[key]] = None
            continue
        if key in index:
            results[index[key]] = value
        else:
            index[key] = len(results)
            results.append(value)
    return [e for e in results if e]


# -- process -------------------------------------------------------------------------------------

def with_env(env: Iterable[str]) -> SpecOpt:
    """Set, replace (``K=V``) or unset (``K``) environment variables."""
    env = list(env)

    def opt(ctx: SpecContext, spec: Spec) -> None:
        if env:
            p = _process(spec)
            p["env"] = replace_or_append_env(p.get("env") or [], env)
    return opt


def with_process_args(*args: str) -> SpecOpt:
    """Replace the whole command line (entrypoint included), as ``ctr run IMG ID ARGS…`` does."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        p = _process(spec)
        p["args"] = list(args)
        p.pop("commandLine", None)
    return opt


def with_process_cwd(cwd: str) -> SpecOpt:
    """The process's working directory (containerd ``WithProcessCwd``)."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        _process(spec)["cwd"] = cwd
    return opt


def with_tty(ctx: SpecContext, spec: Spec) -> None:
    """Give the process a terminal (and ``TERM=xterm``, as containerd adds on Linux)."""
    p = _process(spec)
    p["terminal"] = True
    if "linux" in spec:
        p["env"] = [*(p.get("env") or []), "TERM=xterm"]


def with_tty_size(width: int, height: int) -> SpecOpt:
    """The process's console size in columns and rows (containerd ``WithTTYSize``)."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        _process(spec)["consoleSize"] = {"height": height, "width": width}
    return opt


def with_hostname(name: str) -> SpecOpt:
    """The container's hostname (containerd ``WithHostname``)."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        spec["hostname"] = name
    return opt


def with_new_privileges(ctx: SpecContext, spec: Spec) -> None:
    """Let the process gain privileges (``noNewPrivileges`` false)."""
    _process(spec)["noNewPrivileges"] = False


def with_no_new_privileges(ctx: SpecContext, spec: Spec) -> None:
    _process(spec)["noNewPrivileges"] = True


def with_rlimit(type_: str, hard: int, soft: int) -> SpecOpt:
    """Set (replace) one rlimit, e.g. ``("RLIMIT_NOFILE", 4096, 4096)``."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        p = _process(spec)
        limits = [r for r in p.get("rlimits") or [] if r.get("type") != type_]
        p["rlimits"] = [*limits, {"type": type_, "hard": hard, "soft": soft}]
    return opt


def with_annotations(annotations: Mapping[str, str]) -> SpecOpt:
    """Add or replace spec annotations (containerd ``WithAnnotations``)."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        spec.setdefault("annotations", {}).update(annotations)
    return opt


# -- image config ----------------------------------------------------------------------------------

def with_image_config(image_config: Mapping[str, Any], args: Sequence[str] | None = None) -> SpecOpt:
    """Apply an OCI image config document (its ``config`` object), as ``WithImageConfigArgs``.

    - env: the image's ``Env`` (or :data:`DEFAULT_ENV` when it has none) with the spec's
      current env applied over it by key;
    - args: ``Entrypoint`` + (``args`` if given, else ``Cmd``);
    - cwd: ``WorkingDir`` or ``/``;
    - user: ``User`` resolved with :func:`with_user`, then supplementary groups of that uid
      (or of ``root`` when the image names no user) from ``/etc/group``.
    """
    config: Mapping[str, Any] = image_config.get("config") or {}

    def opt(ctx: SpecContext, spec: Spec) -> None:
        p = _process(spec)
        if "linux" not in spec:
            raise InvalidArgument("spec does not contain a Linux section")
        defaults = list(config.get("Env") or DEFAULT_ENV)
        p["env"] = replace_or_append_env(defaults, p.get("env") or [])
        cmd = list(args) if args else list(config.get("Cmd") or [])
        p["args"] = [*(config.get("Entrypoint") or []), *cmd]
        p["cwd"] = config.get("WorkingDir") or "/"
        user = config.get("User") or ""
        if user:
            with_user(user)(ctx, spec)
            with_additional_gids(str(_user(spec)["uid"]))(ctx, spec)
        else:
            with_additional_gids("root")(ctx, spec)
    return opt


# -- users and groups ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Passwd:
    name: str
    uid: int
    gid: int


@dataclasses.dataclass(frozen=True)
class _Group:
    name: str
    gid: int
    members: tuple[str, ...]


def _lines(data: bytes) -> Iterable[list[str]]:
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line.split(":")


def _passwd(rootfs: RootFS) -> list[_Passwd] | None:
    data = rootfs.read("/etc/passwd")
    if data is None:
        return None
    out = []
    for f in _lines(data):
        if len(f) >= 4:
            try:
                out.append(_Passwd(f[0], int(f[2]), int(f[3])))
            except ValueError:
                continue
    return out


def _groups(rootfs: RootFS) -> list[_Group] | None:
    data = rootfs.read("/etc/group")
    if data is None:
        return None
    out = []
    for f in _lines(data):
        if len(f) >= 3:
            try:
                gid = int(f[2])
            except ValueError:
                continue
            members = tuple(m for m in (f[3].split(",") if len(f) > 3 else []) if m)
            out.append(_Group(f[0], gid, members))
    return out


def _need_rootfs(ctx: SpecContext, spec: Spec) -> RootFS:
    if ctx.rootfs is not None:
        return ctx.rootfs
    path = (spec.get("root") or {}).get("path") or ""
    if os.path.isabs(path):
        return DirRootFS(path)
    raise FailedPrecondition("resolving a user needs the container's root filesystem "
                             "(a snapshot or an absolute root path)")


def _id(text: str, what: str, userstr: str) -> int | None:
    """``text`` as an id, None when not numeric; InvalidArgument when out of range."""
    try:
        value = int(text, 10)
    except ValueError:
        return None
    if not 0 <= value <= MAX_ID:
        raise InvalidArgument(f"invalid USER value {userstr!r}: {what} out of range")
    return value


def with_uidgid(uid: int, gid: int) -> SpecOpt:
    """Set uid and gid as given (no lookup)."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        user = _user(spec)
        user.pop("additionalGids", None)
        user["uid"], user["gid"] = uid, gid
        _ensure_additional_gids(spec)
    return opt


def with_user_id(uid: int) -> SpecOpt:
    """uid, and the gid ``/etc/passwd`` gives it (0 when the file or the entry is missing)."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        user = _user(spec)
        user.pop("additionalGids", None)
        try:
            users = _passwd(_need_rootfs(ctx, spec))
        except FailedPrecondition:  # nothing to read: as if /etc/passwd were missing
            users = None
        match = next((u for u in users or [] if u.uid == uid), None)
        user["uid"], user["gid"] = uid, match.gid if match else 0
        _ensure_additional_gids(spec)
    return opt


def with_username(name: str) -> SpecOpt:
    """uid and gid of ``name`` in ``/etc/passwd``; NotFound when it is not there."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        user = _user(spec)
        user.pop("additionalGids", None)
        users = _passwd(_need_rootfs(ctx, spec))
        match = next((u for u in users or [] if u.name == name), None)
        if match is None:
            raise NotFound(f"no users found matching {name!r} in /etc/passwd")
        user["uid"], user["gid"] = match.uid, match.gid
        _ensure_additional_gids(spec)
    return opt


def with_user(userstr: str) -> SpecOpt:
    """``uid``, ``name``, ``uid:gid``, ``name:group`` … resolved as containerd's ``WithUser``.

    A number alone takes its gid from ``/etc/passwd`` (:func:`with_user_id`); a
    name alone must exist there (:func:`with_username`); in ``user:group`` each
    name is looked up (``/etc/passwd``, ``/etc/group``), numbers are taken as they are.
    """
    def opt(ctx: SpecContext, spec: Spec) -> None:
        parts = userstr.split(":")
        if len(parts) == 1:
            uid = _id(parts[0], "uid", userstr)
            (with_username(userstr) if uid is None else with_user_id(uid))(ctx, spec)
            return
        if len(parts) != 2:
            raise InvalidArgument(f"invalid USER value {userstr!r}")
        user = _user(spec)
        user.pop("additionalGids", None)
        uid = _id(parts[0], "uid", userstr)
        gid = _id(parts[1], "gid", userstr)
        if uid is None or gid is None:
            rootfs = _need_rootfs(ctx, spec)
            if uid is None:
                users = _passwd(rootfs)
                match = next((u for u in users or [] if u.name == parts[0]), None)
                if match is None:
                    raise NotFound(f"no users found matching {parts[0]!r} in /etc/passwd")
                uid = match.uid
            if gid is None:
                groups = _groups(rootfs)
                found = next((g for g in groups or [] if g.name == parts[1]), None)
                if found is None:
                    raise NotFound(f"no groups found matching {parts[1]!r} in /etc/group")
                gid = found.gid
        user["uid"], user["gid"] = uid, gid
        _ensure_additional_gids(spec)
    return opt


def with_additional_gids(userstr: str) -> SpecOpt:
    """Supplementary groups of the user (a uid or a name) from ``/etc/group``.

    Groups that list the user as a member, except the one named like the user.
    Missing files or an unknown uid leave only the primary gid. Without a readable
    root filesystem this only ensures the primary gid is listed.
    """
    def opt(ctx: SpecContext, spec: Spec) -> None:
        user = _user(spec)
        user.pop("additionalGids", None)
        try:
            rootfs = _need_rootfs(ctx, spec)
        except FailedPrecondition:
            _ensure_additional_gids(spec)
            return
        name = userstr
        uid = _id(userstr, "uid", userstr) if userstr.isdigit() else None
        if uid is not None:
            users = _passwd(rootfs)
            match = next((u for u in users or [] if u.uid == uid), None)
            if match is None:
                _ensure_additional_gids(spec)
                return
            name = match.name
        groups = _groups(rootfs) or []
        user["additionalGids"] = [g.gid for g in groups if g.name != name and name in g.members]
        _ensure_additional_gids(spec)
    return opt


# -- mounts, root, namespaces ----------------------------------------------------------------------

def parse_mount(flag: str) -> dict[str, Any]:
    """One ``ctr run --mount`` value, e.g. ``type=bind,src=/h,dst=/c,options=rbind:ro``.

    CSV fields ``key=value`` with keys type, source/src, destination/dst and
    options (``:``-separated). Raises InvalidArgument for anything else.
    """
    try:
        fields = next(csv.reader([flag]))
    except (csv.Error, StopIteration) as e:
        raise InvalidArgument(f"invalid mount specification {flag!r}: {e}") from None
    mount: dict[str, Any] = {"destination": "", "type": "", "source": ""}
    for field in fields:
        key, sep, value = field.partition("=")
        if not sep:
            raise InvalidArgument("invalid mount specification: expected key=val")
        if key == "type":
            mount["type"] = value
        elif key in ("source", "src"):
            mount["source"] = value
        elif key in ("destination", "dst"):
            mount["destination"] = value
        elif key == "options":
            mount["options"] = value.split(":")
        else:
            raise InvalidArgument(f"mount option {key!r} not supported")
    return mount


def with_mounts(mounts: Iterable[Mapping[str, Any] | str]) -> SpecOpt:
    """Append mounts: runtime-spec mount objects or ``--mount`` strings (:func:`parse_mount`)."""
    parsed = [parse_mount(m) if isinstance(m, str) else dict(m) for m in mounts]

    def opt(ctx: SpecContext, spec: Spec) -> None:
        spec["mounts"] = [*(spec.get("mounts") or []), *copy.deepcopy(parsed)]
    return opt


def without_mounts(*destinations: str) -> SpecOpt:
    """Remove the mounts on ``destinations``."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        spec["mounts"] = [m for m in spec.get("mounts") or []
                          if posixpath.normpath(m.get("destination", "")) not in destinations]
    return opt


def with_rootfs_path(path: str) -> SpecOpt:
    """The root file system's path, relative to the bundle (containerd ``WithRootFSPath``)."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        spec.setdefault("root", {})["path"] = path
    return opt


def with_rootfs_readonly(ctx: SpecContext, spec: Spec) -> None:
    """Mount the root file system read-only (containerd ``WithRootFSReadonly``)."""
    spec.setdefault("root", {"path": DEFAULT_ROOTFS_PATH})["readonly"] = True


def with_host_namespace(ns: str) -> SpecOpt:
    """Share the host's namespace of type ``ns`` (``network``, ``pid``, …): drop it from the spec."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        linux = _linux(spec)
        linux["namespaces"] = [n for n in linux.get("namespaces") or [] if n.get("type") != ns]
    return opt


def with_linux_namespace(ns: str, path: str = "") -> SpecOpt:
    """Use (or join, with ``path``) a namespace of type ``ns``, replacing one of that type."""
    entry = {"type": ns, **({"path": path} if path else {})}

    def opt(ctx: SpecContext, spec: Spec) -> None:
        linux = _linux(spec)
        found = linux.setdefault("namespaces", [])
        for i, n in enumerate(found):
            if n.get("type") == ns:
                found[i] = dict(entry)
                return
        found.append(dict(entry))
    return opt


def with_cgroup(path: str) -> SpecOpt:
    """``linux.cgroupsPath`` (containerd ``WithCgroup``)."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        _linux(spec)["cgroupsPath"] = path
    return opt


def with_masked_paths(paths: Iterable[str] | None) -> SpecOpt:
    """Replace ``linux.maskedPaths`` (containerd ``WithMaskedPaths``)."""
    values = list(paths or [])

    def opt(ctx: SpecContext, spec: Spec) -> None:
        _linux(spec)["maskedPaths"] = list(values)
    return opt


def with_readonly_paths(paths: Iterable[str] | None) -> SpecOpt:
    """Replace ``linux.readonlyPaths`` (containerd ``WithReadonlyPaths``)."""
    values = list(paths or [])

    def opt(ctx: SpecContext, spec: Spec) -> None:
        _linux(spec)["readonlyPaths"] = list(values)
    return opt


def with_memory_limit(limit: int) -> SpecOpt:
    """Memory limit in bytes (containerd ``WithMemoryLimit``)."""
    def opt(ctx: SpecContext, spec: Spec) -> None:
        _resources(spec).setdefault("memory", {})["limit"] = limit
    return opt


# -- devices and capabilities --------------------------------------------------------------------

def with_default_unix_devices(ctx: SpecContext, spec: Spec) -> None:
    """Allow the standard character devices (null, random, full, tty, zero, urandom, console,
    pts, ptmx) in the device cgroup, as ``ctr run`` adds."""
    devices = _resources(spec).setdefault("devices", [])
    for major, minor in ((1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1), (136, None), (5, 2)):
        entry: dict[str, Any] = {"allow": True, "type": "c", "major": major}
        if minor is not None:
            entry["minor"] = minor
        entry["access"] = RWM
        devices.append(entry)


def with_all_devices_allowed(ctx: SpecContext, spec: Spec) -> None:
    """Allow every device in the device cgroup (containerd ``WithAllDevicesAllowed``)."""
    _resources(spec)["devices"] = [{"allow": True, "access": RWM}]


def with_capabilities(caps: Iterable[str]) -> SpecOpt:
    """Exactly ``caps`` in bounding, effective and permitted."""
    values = list(caps)

    def opt(ctx: SpecContext, spec: Spec) -> None:
        c = _caps(spec)
        for key in ("bounding", "effective", "permitted"):
            c[key] = list(values)
    return opt


def with_added_capabilities(caps: Iterable[str]) -> SpecOpt:
    """Add ``caps`` to the bounding, effective and permitted sets (containerd ``WithAddedCapabilities``)."""
    values = list(caps)

    def opt(ctx: SpecContext, spec: Spec) -> None:
        c = _caps(spec)
        for key in ("bounding", "effective", "permitted"):
            current = c.setdefault(key, [])
            current.extend(x for x in values if x not in current)
    return opt


def with_dropped_capabilities(caps: Iterable[str]) -> SpecOpt:
    """Remove ``caps`` from the bounding, effective and permitted sets
    (containerd ``WithDroppedCapabilities``)."""
    values = set(caps)

    def opt(ctx: SpecContext, spec: Spec) -> None:
        c = _caps(spec)
        for key in ("bounding", "effective", "permitted"):
            c[key] = [x for x in c.get(key) or [] if x not in values]
    return opt


#: capability names by number (containerd ``pkg/cap``, Linux 5.9)
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
    "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)


def host_caps() -> list[str]:
    """Every capability this kernel knows (``/proc/sys/kernel/cap_last_cap``)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read().strip())
    except (OSError, ValueError):
        last = len(CAPABILITIES) - 1
    return list(CAPABILITIES[:last + 1])


def with_privileged(ctx: SpecContext, spec: Spec) -> None:
    """containerd's ``WithPrivileged``: all capabilities, no masked or read-only paths, writable
    /sys and cgroupfs, no SELinux label, AppArmor profile or seccomp filter."""
    caps = host_caps()
    with_capabilities(caps)(ctx, spec)
    _caps(spec)["inheritable"] = list(caps)
    linux = _linux(spec)
    linux["maskedPaths"] = []
    linux["readonlyPaths"] = []
    for m in spec.get("mounts") or []:
        if m.get("type") in ("sysfs", "cgroup"):
            m["options"] = [o for o in m.get("options") or [] if o != "ro"]
    p = _process(spec)
    p.pop("selinuxLabel", None)
    p.pop("apparmorProfile", None)
    linux.pop("seccomp", None)
