"""Security helpers for CRI specs: sysctls, capabilities, users, oom_score_adj, untrusted image data.

Everything here is a pure function of its arguments and a few host files
(``/proc/self/status``, ``/proc/self/oom_score_adj``, ``/sys/module/apparmor``,
``/sys/kernel/security/apparmor/profiles``); :mod:`aiocontainerd.cri.spec` uses
them to build specs and the CRI services may call them directly.

Sources (containerd 2.x, ``internal/cri``): ``util/util.go``
(``GenerateUserString``, ``BuildLabels``, ``GetPassthroughAnnotations``),
``opts/spec_linux_opts.go`` (``restrictOOMScoreAdj``), ``pkg/cap`` (capability
names, ``Current``), ``pkg/labels`` (reserved prefixes, size limit),
``sputil/apparmor_linux.go`` and ``securityprofile_linux.go``. Sysctl checks
follow kubelet's ``pkg/kubelet/sysctl`` namespace rules (containerd passes
sysctls through; runc validates them later) plus the value checks of the
CVE-2022-0811 fix (no ``+``/``=`` smuggling extra settings).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.errors import InvalidArgument, NotFound
from aiocontainerd.oci import CAPABILITIES

log = logging.getLogger(__name__)

#: label prefixes reserved for containerd and its CRI plugin (never copied from images)
RESERVED_LABEL_PREFIXES = ("containerd.io/", "io.cri-containerd")
#: label on every CRI container record: ``sandbox`` or ``container``
CONTAINER_KIND_LABEL = "io.cri-containerd.kind"
#: containerd's bound on a label's key + value
MAX_LABEL_SIZE = 4096

_CAP_SYS_RESOURCE = CAPABILITIES.index("CAP_SYS_RESOURCE")

# -- sysctls -------------------------------------------------------------------------------------

#: sysctls in the IPC namespace: exact names and prefixes (kubelet ``NamespacedBy``)
IPC_SYSCTLS = ("kernel.sem",)
IPC_SYSCTL_PREFIXES = ("kernel.shm", "kernel.msg", "fs.mqueue.")
#: sysctls in the network namespace
NET_SYSCTL_PREFIXES = ("net.",)
# a sysctl name: dot/slash separated segments of [a-z0-9_-] (Kubernetes' validation)
_SEGMENT = r"[a-z0-9]([-_a-z0-9]*[a-z0-9])?"
_SYSCTL_NAME = re.compile(rf"^({_SEGMENT}[./])*{_SEGMENT}$")
_BAD_VALUE_CHARS = ("+", "=", "\n", "\r", "\x00")


def normalize_sysctl_name(name: str) -> str:
    """Dot-separated form of ``name`` (kubelet's ``ConvertSysctlVariableToDotsSeparator``):
    when the first separator is ``/``, slashes and dots swap (``net/ipv4/conf/eth0.1/x`` →
    ``net.ipv4.conf.eth0/1.x``)."""
    for ch in name:
        if ch == ".":
            return name
        if ch == "/":
            return name.translate(str.maketrans("./", "/."))
    return name


def sysctl_namespace(name: str) -> str | None:
    """``"ipc"``, ``"net"`` or None (not namespaced) for a dot-separated sysctl name."""
    if name in IPC_SYSCTLS or name.startswith(IPC_SYSCTL_PREFIXES):
        return "ipc"
    if name.startswith(NET_SYSCTL_PREFIXES):
        return "net"
    return None


def validate_sysctls(sysctls: Mapping[str, str], *, host_network: bool = False,
                     host_ipc: bool = False) -> dict[str, str]:
    """The pod's sysctls (names normalised to dots) after checking each one.

    Allowed: namespaced sysctls only — ``kernel.shm*``, ``kernel.msg*``, ``kernel.sem``,
    ``fs.mqueue.*`` (IPC; not with host IPC) and ``net.*`` (not with host network).
    Values containing ``+``, ``=``, a newline, CR or NUL are rejected (CVE-2022-0811).
    Raises InvalidArgument naming the sysctl.
    """
    out: dict[str, str] = {}
    for raw, value in sysctls.items():
        name = normalize_sysctl_name(raw)
        if not _SYSCTL_NAME.match(name) or ".." in name:
            raise InvalidArgument(f"sysctl {raw!r}: invalid name")
        ns = sysctl_namespace(name)
        if ns is None:
            raise InvalidArgument(f"sysctl {raw!r} is not namespaced and cannot be set in a pod")
        if ns == "net" and host_network:
            raise InvalidArgument(f"sysctl {raw!r} is in the network namespace and cannot be set "
                                  "for a pod using the host network")
        if ns == "ipc" and host_ipc:
            raise InvalidArgument(f"sysctl {raw!r} is in the IPC namespace and cannot be set "
                                  "for a pod using the host IPC namespace")
        bad = next((c for c in _BAD_VALUE_CHARS if c in value), None)
        if bad is not None:
            raise InvalidArgument(f"sysctl {raw!r}: value {value!r} contains the forbidden "
                                  f"character {bad!r}")
        out[name] = value
    return out


# -- capabilities and oom_score_adj --------------------------------------------------------------

def _status_field(key: str) -> str | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                k, sep, v = line.partition(":")
                if sep and k.strip() == key:
                    return v.strip()
    except OSError:
        return None
    return None


def caps_from_bitmap(bits: int) -> list[str]:
    """Capability names of the set bits (unknown numbers skipped)."""
    return [name for i, name in enumerate(CAPABILITIES) if bits >> i & 1]


def current_capabilities() -> list[str]:
    """Effective capabilities of this process (containerd ``cap.Current``), ``CAP_*`` names.
    What a container gets for ``add: ["ALL"]`` and when privileged."""
    value = _status_field("CapEff")
    return caps_from_bitmap(int(value, 16)) if value else []


def known_capabilities() -> list[str]:
    """Every capability name containerd knows (``cap.Known``)."""
    return list(CAPABILITIES)


def current_oom_score_adj() -> int:
    """This process's ``/proc/self/oom_score_adj``. Raises InvalidArgument when unreadable
    (containerd: "could not get the daemon oom_score_adj")."""
    try:
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read().strip())
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"could not get the daemon oom_score_adj: {e}") from None


def can_lower_oom_score_adj() -> bool:
    """Whether this process (and the runtime it starts) holds CAP_SYS_RESOURCE."""
    value = _status_field("CapEff")
    return bool(value) and bool(int(value, 16) >> _CAP_SYS_RESOURCE & 1)


def clamp_oom_score_adj(value: int, *, restrict: bool = False, current: int | None = None,
                        can_lower: bool | None = None) -> int:
    """``value`` raised to the daemon's own oom_score_adj when it may not go lower.

    Clamped when ``restrict`` (containerd's ``restrict_oom_score_adj``) or when this
    process lacks CAP_SYS_RESOURCE (``can_lower`` False; default: looked up), since the
    runtime would fail to set a lower value. ``current`` defaults to
    :func:`current_oom_score_adj`.
    """
    if can_lower is None:
        can_lower = can_lower_oom_score_adj()
    if not restrict and can_lower:
        return value
    if current is None:
        current = current_oom_score_adj()
    return max(value, current)


# -- users ----------------------------------------------------------------------------------------

def generate_user_string(username: str, uid: api.Int64Value | None, gid: api.Int64Value | None) -> str:
    """containerd ``util.GenerateUserString``: ``name``/``uid`` + ``:gid``; "" when none.

    The name wins over the uid. InvalidArgument for a gid without a user.
    """
    userstr = str(uid.value) if uid is not None else ""
    if username:
        userstr = username
    groupstr = str(gid.value) if gid is not None else ""
    if not userstr:
        if groupstr:
            raise InvalidArgument(f"user group {groupstr!r} is specified without user")
        return ""
    return f"{userstr}:{groupstr}" if groupstr else userstr


# -- labels and annotations ---------------------------------------------------------------------

def is_reserved_label(key: str) -> bool:
    """Whether ``key`` is in a namespace containerd or its CRI plugin interprets."""
    return key.startswith(RESERVED_LABEL_PREFIXES)


def build_labels(config_labels: Mapping[str, str], image_labels: Mapping[str, str] | None,
                 kind: str) -> dict[str, str]:
    """Container record labels (containerd ``util.BuildLabels``): image labels minus reserved
    and oversized ones, request labels over them, ``io.cri-containerd.kind=<kind>``."""
    labels: dict[str, str] = {}
    for k, v in (image_labels or {}).items():
        if is_reserved_label(k):
            log.warning("skipping image label %r: the label namespace is reserved for containerd", k)
            continue
        if len(k) + len(v) > MAX_LABEL_SIZE:
            log.warning("skipping image label %r: key and value longer than %d bytes", k[:64],
                        MAX_LABEL_SIZE)
            continue
        labels[k] = v
    labels.update(config_labels)
    labels[CONTAINER_KIND_LABEL] = kind
    return labels


def _path_match(pattern: str, name: str) -> bool:
    """Go's ``path.Match``: ``*`` and ``?`` never cross ``/``; a bad pattern matches nothing."""
    regex = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            regex.append("[^/]*")
        elif c == "?":
            regex.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                return False
            body = pattern[i + 1:end]
            negate = body[:1] == "^"
            if negate:
                body = body[1:]
            if not body:
                return False
            body = body.replace("\\", "\\\\").replace("]", "\\]")
            regex.append(("[^" if negate else "[") + body + "]")
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            regex.append(re.escape(pattern[i]))
        else:
            regex.append(re.escape(c))
        i += 1
    return re.fullmatch("".join(regex), name) is not None


def passthrough_annotations(annotations: Mapping[str, str], patterns: Iterable[str]) -> dict[str, str]:
    """Annotations whose key matches one of the runtime's glob ``patterns`` (``path.Match``;
    containerd ``GetPassthroughAnnotations``)."""
    patterns = list(patterns)
    return {k: v for k, v in annotations.items() if any(_path_match(p, k) for p in patterns)}


# -- AppArmor -------------------------------------------------------------------------------------

#: profile containerd generates for RuntimeDefault
APPARMOR_DEFAULT_PROFILE = "cri-containerd.apparmor.d"
_LOCALHOST = "localhost/"


def apparmor_enabled(disabled: bool = False) -> bool:
    """AppArmor usable: not ``disable_apparmor``, ``/sys/module/apparmor/parameters/enabled`` is Y
    (containerd's ``apparmor.HostSupports``, which also needs ``apparmor_parser``)."""
    if disabled:
        return False
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            enabled = f.read().strip().startswith("Y")
    except OSError:
        return False
    import shutil

    return enabled and shutil.which("apparmor_parser") is not None


def _apparmor_profile_exists(name: str) -> bool:
    try:
        with open("/sys/kernel/security/apparmor/profiles") as f:
            return any(line.startswith(name + " (") for line in f)
    except OSError as e:
        raise InvalidArgument(f"failed to generate apparmor spec opts: {e}") from None


def apparmor_security_profile(legacy: str) -> api.SecurityProfile | None:
    """The deprecated ``apparmor_profile`` string as a SecurityProfile (None for "")."""
    if not legacy:
        return None
    from .seccomp import security_profile

    return security_profile(legacy)


def apparmor_profile_for(profile: api.SecurityProfile | None, legacy: str, *, privileged: bool,
                         enabled: bool) -> str | None:
    """The ``process.apparmorProfile`` to set, or None (containerd ``GenerateApparmorSpecOpts``).

    ``profile`` wins over the ``legacy`` string. AppArmor unavailable: None, and
    InvalidArgument ("apparmor is not supported") for anything but Unconfined/absent.
    Enabled: absent or RuntimeDefault → containerd's default profile name (not for
    privileged containers); Localhost → the named profile, NotFound unless loaded.
    Loading the default profile into the kernel is not done here (no host has it yet).
    """
    sp = profile if profile is not None else apparmor_security_profile(legacy)
    types = api.SecurityProfileProfileType
    if not enabled:
        if sp is not None and sp.profile_type != types.Unconfined:
            raise InvalidArgument("apparmor is not supported")
        return None
    if sp is None:
        sp = api.SecurityProfile(profile_type=types.RuntimeDefault)
    if sp.profile_type != types.Localhost and sp.localhost_ref:
        raise InvalidArgument("apparmor config invalid LocalhostRef must only be set if "
                              "ProfileType is Localhost")
    if sp.profile_type == types.Unconfined:
        return None
    if sp.profile_type == types.RuntimeDefault:
        return None if privileged else APPARMOR_DEFAULT_PROFILE
    if sp.profile_type == types.Localhost:
        name = sp.localhost_ref.removeprefix(_LOCALHOST)
        if not name:
            raise InvalidArgument("nil apparmor profile is not supported")
        if not _apparmor_profile_exists(name):
            raise NotFound(f"apparmor profile not found {name}")
        return name
    raise InvalidArgument("apparmor unknown ProfileType")
