"""The CRI plugin's configuration: ``[plugins."io.containerd.grpc.v1.cri"]``.

Key names are containerd's (1.6/1.7 layout, the one Debian's containerd 1.6
prints with ``containerd config default``) wherever we support the setting;
``max_exec_sync_output_size`` is ours. Every key, with its default::

    [plugins."io.containerd.grpc.v1.cri"]
      sandbox_image = "registry.k8s.io/pause:3.10"  # the pause image; pinned (never GC'd)
      stats_collect_period = 10            # seconds between snapshot usage refreshes
      stream_server_address = "127.0.0.1"  # streaming server (exec/attach/port-forward)
      stream_server_port = "0"             # "0": a free port chosen at start
      stream_idle_timeout = "4h"           # Go duration; a stream idle this long is closed
      max_container_log_line_size = 16384  # longer lines are split; <= 0: no limit
      max_concurrent_downloads = 3         # blobs of one pull fetched at once
      image_pull_progress_timeout = "5m"   # a pull without progress this long fails; "0": never
      max_exec_sync_output_size = 16777216 # ExecSync keeps at most this much of stdout/stderr
      drain_exec_sync_io_timeout = "0s"    # wait for ExecSync I/O after the process exits; 0: forever
      enable_selinux = false
      selinux_category_range = 1024
      restrict_oom_score_adj = false       # clamp oom_score_adj to the daemon's own
      disable_cgroup = false               # no cgroup limits at all (rootless)
      disable_apparmor = false
      disable_proc_mount = false
      disable_hugetlb_controller = true
      tolerate_missing_hugetlb_controller = true
      ignore_image_defined_volumes = false
      device_ownership_from_security_context = false
      unset_seccomp_profile = ""           # the profile when the request names none
      enable_unprivileged_ports = false    # net.ipv4.ip_unprivileged_port_start=0 in pods
      enable_unprivileged_icmp = false     # net.ipv4.ping_group_range="0 2147483647"
      netns_mounts_under_state_dir = false # pin netns under <state>/netns, not /var/run/netns

      [plugins."io.containerd.grpc.v1.cri".cni]
        bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]  # searched in order
        bin_dir = ""                       # containerd 1.x single folder; set: used instead
        conf_dir = "/etc/cni/net.d"
        max_conf_num = 1                   # config files loaded; 0: all
        conf_template = ""
        ip_pref = ""                       # "", "ipv4", "ipv6", "cni": which IP is the pod's

      [plugins."io.containerd.grpc.v1.cri".containerd]
        snapshotter = "overlayfs"          # where images are unpacked, rootfs prepared
        default_runtime_name = "runc"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]   # one table per handler
          runtime_type = "io.containerd.runc.v2"
          runtime_path = ""                # shim binary; "": resolved from runtime_type
          sandbox_mode = "podsandbox"      # "podsandbox" (pause container) or "shim"
          snapshotter = ""                 # "": containerd.snapshotter
          pod_annotations = []             # annotation globs passed to the OCI spec
          container_annotations = []
          privileged_without_host_devices = false
          base_runtime_spec = ""           # JSON OCI spec file to start from
          cni_conf_dir = ""                # per-handler CNI config ("": cni.conf_dir)
          cni_max_conf_num = 0
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
            # runtime options, as containerd's runc.v1.Options: BinaryName, Root,
            # SystemdCgroup, NoPivotRoot, NoNewKeyring, ShimCgroup, IoUid, IoGid,
            # CriuPath, CriuImagePath, CriuWorkPath

      [plugins."io.containerd.grpc.v1.cri".registry]
        config_path = ""                   # hosts.toml folder tree (mirrors, TLS, ...)
        [plugins."io.containerd.grpc.v1.cri".registry.headers]   # name = ["values"]
        [plugins."io.containerd.grpc.v1.cri".registry.configs."<host>".auth]
          username = "" ; password = "" ; auth = "" ; identitytoken = ""

The handler named ``default_runtime_name`` must exist; a config that lists
other handlers but not ``runc`` while ``runc`` is the default gets containerd's
default ``runc`` entry added (containerd merges the file over its defaults).

Validation happens when the dataclasses are built (``aiocontainerd.config.build``):
a bad value raises ``ValueError`` naming the key, which the loader reports as a
ConfigError with the file. Sources: containerd ``internal/cri/config/config.go``
and ``config_unix.go`` (defaults), ``containerd config default`` of 1.6.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiocontainerd.errors import InvalidArgument, NotFound

#: The pause image. containerd 1.6 defaults to ``pause:3.6``, containerd 2.0 and
#: Kubernetes 1.32 (kubeadm, critest v1.32) to ``pause:3.10``; the critest stand-in
#: images (``/work/shared/critest-images/build.sh``) provide ``pause:3.10`` only.
DEFAULT_SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"
DEFAULT_RUNTIME_TYPE = "io.containerd.runc.v2"
DEFAULT_MAX_EXEC_SYNC_OUTPUT = 16 << 20
SANDBOX_MODES = ("podsandbox", "shim")
IP_PREFERENCES = ("", "ipv4", "ipv6", "cni")


def _duration(key: str, value: str) -> float:
    """Seconds of a Go duration string (``"4h"``, ``"4h0m0s"``, ``"90s"``); ValueError names ``key``."""
    from aiocontainerd.remotes.hosts import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError(f"key {key!r}: {value!r} is not a duration (e.g. \"4h\", \"30s\")") from None
    if seconds < 0:
        raise ValueError(f"key {key!r}: {value!r} must not be negative")
    return seconds


@dataclasses.dataclass
class Runtime:
    """``containerd.runtimes.<handler>``: one runtime handler (see the module doc)."""

    runtime_type: str = DEFAULT_RUNTIME_TYPE
    runtime_path: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    sandbox_mode: str = "podsandbox"
    snapshotter: str = ""
    pod_annotations: list[str] = dataclasses.field(default_factory=list)
    container_annotations: list[str] = dataclasses.field(default_factory=list)
    privileged_without_host_devices: bool = False
    base_runtime_spec: str = ""
    cni_conf_dir: str = ""
    cni_max_conf_num: int = 0

    def __post_init__(self) -> None:
        if not self.runtime_type:
            raise ValueError("key 'runtime_type': must not be empty")
        if self.sandbox_mode not in SANDBOX_MODES:
            raise ValueError(f"key 'sandbox_mode': {self.sandbox_mode!r} is not one of "
                             f"{', '.join(SANDBOX_MODES)}")
        if self.cni_max_conf_num < 0:
            raise ValueError("key 'cni_max_conf_num': must not be negative")


@dataclasses.dataclass
class ContainerdConfig:
    """``containerd``: the snapshotter and the runtime handlers."""

    snapshotter: str = "overlayfs"
    default_runtime_name: str = "runc"
    runtimes: dict[str, Runtime] = dataclasses.field(default_factory=lambda: {"runc": Runtime()})

    def __post_init__(self) -> None:
        if not self.snapshotter:
            raise ValueError("key 'snapshotter': must not be empty")
        if not self.default_runtime_name:
            raise ValueError("key 'default_runtime_name': must not be empty")
        if self.default_runtime_name not in self.runtimes:
            if self.default_runtime_name != "runc":
                raise ValueError(f"key 'default_runtime_name': no runtime {self.default_runtime_name!r} "
                                 "in 'runtimes'")
            self.runtimes = {"runc": Runtime(), **self.runtimes}


@dataclasses.dataclass
class CNIConfig:
    """``cni``: where CNI plugins and network configurations are found."""

    bin_dirs: list[str] = dataclasses.field(default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])
    bin_dir: str = ""
    conf_dir: str = "/etc/cni/net.d"
    max_conf_num: int = 1
    conf_template: str = ""
    ip_pref: str = ""

    def __post_init__(self) -> None:
        if self.max_conf_num < 0:
            raise ValueError("key 'max_conf_num': must not be negative (0 loads every file)")
        if not self.conf_dir:
            raise ValueError("key 'conf_dir': must not be empty")
        if self.ip_pref not in IP_PREFERENCES:
            raise ValueError(f"key 'ip_pref': {self.ip_pref!r} is not one of ipv4, ipv6, cni or empty")

    @property
    def plugin_dirs(self) -> list[str]:
        """Folders searched for plugin binaries: ``bin_dir`` alone when set, else ``bin_dirs``."""
        return [self.bin_dir] if self.bin_dir else list(self.bin_dirs)


@dataclasses.dataclass
class RegistryAuth:
    """``registry.configs."<host>".auth``: credentials used when a PullImage brings none."""

    username: str = ""
    password: str = ""
    auth: str = ""
    identitytoken: str = ""


@dataclasses.dataclass
class RegistryHostConfig:
    """``registry.configs."<host>"``."""

    auth: RegistryAuth = dataclasses.field(default_factory=RegistryAuth)


@dataclasses.dataclass
class RegistryConfig:
    """``registry``: the ``hosts.toml`` tree, headers on every request, per-host credentials."""

    config_path: str = ""
    headers: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    configs: dict[str, RegistryHostConfig] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if ":" in self.config_path:
            raise ValueError("key 'config_path': one folder only (a list of folders is not supported)")


@dataclasses.dataclass
class CRIConfig:
    """``[plugins."io.containerd.grpc.v1.cri"]`` (every key: see the module doc)."""

    sandbox_image: str = DEFAULT_SANDBOX_IMAGE
    stats_collect_period: int = 10
    stream_server_address: str = "127.0.0.1"
    stream_server_port: str = "0"
    stream_idle_timeout: str = "4h"
    max_container_log_line_size: int = 16384
    max_concurrent_downloads: int = 3
    image_pull_progress_timeout: str = "5m"
    max_exec_sync_output_size: int = DEFAULT_MAX_EXEC_SYNC_OUTPUT
    drain_exec_sync_io_timeout: str = "0s"
    enable_selinux: bool = False
    selinux_category_range: int = 1024
    restrict_oom_score_adj: bool = False
    disable_cgroup: bool = False
    disable_apparmor: bool = False
    disable_proc_mount: bool = False
    disable_hugetlb_controller: bool = True
    tolerate_missing_hugetlb_controller: bool = True
    ignore_image_defined_volumes: bool = False
    device_ownership_from_security_context: bool = False
    unset_seccomp_profile: str = ""
    enable_unprivileged_ports: bool = False
    enable_unprivileged_icmp: bool = False
    netns_mounts_under_state_dir: bool = False
    cni: CNIConfig = dataclasses.field(default_factory=CNIConfig)
    containerd: ContainerdConfig = dataclasses.field(default_factory=ContainerdConfig)
    registry: RegistryConfig = dataclasses.field(default_factory=RegistryConfig)

    def __post_init__(self) -> None:
        from aiocontainerd.remotes import reference

        try:
            reference.parse(self.sandbox_image)
        except InvalidArgument as e:
            raise ValueError(f"key 'sandbox_image': {e.message}") from None
        if self.stats_collect_period < 1:
            raise ValueError("key 'stats_collect_period': must be at least 1 (seconds)")
        if not self.stream_server_port.isdigit() or not 0 <= int(self.stream_server_port) <= 65535:
            raise ValueError(f"key 'stream_server_port': {self.stream_server_port!r} is not a port "
                             "from 0 to 65535")
        if not self.stream_server_address:
            raise ValueError("key 'stream_server_address': must not be empty")
        for key in ("stream_idle_timeout", "image_pull_progress_timeout", "drain_exec_sync_io_timeout"):
            _duration(key, getattr(self, key))
        if self.max_concurrent_downloads < 1:
            raise ValueError("key 'max_concurrent_downloads': must be at least 1")
        if self.max_exec_sync_output_size < 1:
            raise ValueError("key 'max_exec_sync_output_size': must be at least 1 byte")
        if self.selinux_category_range < 1:
            raise ValueError("key 'selinux_category_range': must be at least 1")

    # -- derived values ------------------------------------------------------------------------

    @property
    def snapshotter(self) -> str:
        """The default snapshotter (``containerd.snapshotter``)."""
        return self.containerd.snapshotter

    @property
    def stream_idle_timeout_seconds(self) -> float:
        return _duration("stream_idle_timeout", self.stream_idle_timeout)

    @property
    def image_pull_progress_timeout_seconds(self) -> float:
        """0: no timeout."""
        return _duration("image_pull_progress_timeout", self.image_pull_progress_timeout)

    @property
    def drain_exec_sync_io_timeout_seconds(self) -> float:
        """0: wait as long as it takes."""
        return _duration("drain_exec_sync_io_timeout", self.drain_exec_sync_io_timeout)

    @property
    def sandbox_image_ref(self) -> str:
        """The sandbox image normalised as containerd stores it (``registry.k8s.io/pause:3.10``)."""
        from .reference import normalize

        return normalize(self.sandbox_image)

    def runtime(self, handler: str = "") -> Runtime:
        """The runtime of ``handler`` (``""``: the default). Raises NotFound for an unknown one."""
        name = handler or self.containerd.default_runtime_name
        try:
            return self.containerd.runtimes[name]
        except KeyError:
            raise NotFound(f"no runtime for {name!r} is configured") from None

    def snapshotter_for(self, handler: str = "") -> str:
        """The snapshotter for ``handler``'s pods: its own, else the default."""
        name = handler or self.containerd.default_runtime_name
        runtime = self.containerd.runtimes.get(name)
        return (runtime.snapshotter if runtime is not None else "") or self.snapshotter
