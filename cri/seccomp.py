"""Seccomp for CRI: containerd's default profile and profile selection.

Profiles are the runtime-spec ``linux.seccomp`` object as JSON (what runc reads)::

    {"defaultAction": "SCMP_ACT_ERRNO",
     "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
     "syscalls": [{"names": ["accept", ...], "action": "SCMP_ACT_ALLOW"},
                  {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                   "args": [{"index": 0, "value": 38, "op": "SCMP_CMP_LT"}]}, ...]}

The default profile (:func:`default_profile`) is containerd's
(``contrib/seccomp/seccomp_default.go``, 2.x): everything not listed fails with
EPERM; a base allow-list; ``socket`` for every address family but AF_ALG and
AF_VSOCK; ``personality`` for the usual personas only; ``ptrace`` and
``process_vm_*`` on kernels from 4.8; a few per-architecture calls; calls
unlocked by capabilities of the bounding set (CAP_SYS_ADMIN: mount, unshare,
setns, clone with namespace flags, ...); without CAP_SYS_ADMIN ``clone`` only
without namespace flags and ``clone3`` failing with ENOSYS (so libc falls back
to ``clone``). Names the runtime's libseccomp does not know are skipped by runc.

Profile selection (:func:`seccomp_for`) follows ``internal/cri/sputil``:
privileged → none; RuntimeDefault → default; Unconfined → none; Localhost →
the JSON file; legacy path strings via :func:`security_profile`.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterable
from typing import Any

from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.errors import InvalidArgument

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"

#: allowed for everyone
BASE_SYSCALLS = """
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
    clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
    clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2
    dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
    epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
    fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat
    fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64
    fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64
    futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32
    geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp
    getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
    get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday
    getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
    io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set
    io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self
    lchown lchown32 lgetxattr link linkat listen listmount listxattr listxattrat llistxattr
    _llseek lremovexattr lseek lsetxattr lsm_get_self_attr lsm_list_modules lsm_set_self_attr
    lstat lstat64 madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod
    mknodat mlock mlock2 mlockall map_shadow_stack mmap mmap2 mprotect mq_getsetattr mq_notify
    mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink
    mremap mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at
    nanosleep newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2
    pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64
    process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink
    readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr
    removexattrat rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending
    rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
    rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
    sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
    sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select
    semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg
    sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer
    setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid
    setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid
    setuid32 setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
    sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statmount statx
    symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
    timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create
    timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
    truncate64 ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat utimensat_time64
    utimes vfork vmsplice wait4 waitid waitpid write writev
""".split()

#: seccomp architectures per ``os.uname().machine`` (Go's GOARCH in containerd)
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"),
    "mips64": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32"),
    "s390x": ("SCMP_ARCH_S390", "SCMP_ARCH_S390X"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
    "loongarch64": ("SCMP_ARCH_LOONGARCH64",),
}
#: extra calls allowed per machine
ARCH_SYSCALLS: dict[str, tuple[str, ...]] = {
    "ppc64le": ("sync_file_range2", "swapcontext"),
    "aarch64": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
                "cacheflush", "set_tls"),
    "x86_64": ("arch_prctl", "modify_ldt"),
    "i386": ("modify_ldt",),
    "i686": ("modify_ldt",),
    "s390x": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "riscv64": ("riscv_flush_icache", "riscv_hwprobe"),
}
for _arm in ("armv7l", "armv6l", "armv8l"):
    ARCH_SYSCALLS[_arm] = ARCH_SYSCALLS["aarch64"]
ARCH_SYSCALLS["s390"] = ARCH_SYSCALLS["s390x"]

#: calls each capability of the bounding set unlocks (in containerd's order)
CAP_SYSCALLS: dict[str, tuple[str, ...]] = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": ("bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
                      "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree",
                      "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname",
                      "setns", "syslog", "umount", "umount2", "unshare"),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
                       "ptrace"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

AF_ALG = 38
AF_VSOCK = 40
#: personality(2) personas allowed: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, query
PERSONAS = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)
#: CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP
CLONE_NAMESPACE_FLAGS = (0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
                         | 0x02000000)


def _rule(names: Iterable[str], action: str = ALLOW, args: list[dict[str, Any]] | None = None,
          errno_ret: int | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": list(names), "action": action}
    if args:
        rule["args"] = args
    if errno_ret is not None:
        rule["errnoRet"] = errno_ret
    return rule


def _arg(index: int, value: int, op: str, value_two: int = 0) -> dict[str, Any]:
    arg: dict[str, Any] = {"index": index, "value": value}
    if value_two:
        arg["valueTwo"] = value_two
    arg["op"] = op
    return arg


def _kernel_version() -> tuple[int, int]:
    """(major, minor) of the running kernel (``6.18.44-fc`` → (6, 18))."""
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def seccomp_enabled() -> bool:
    """Whether the kernel has seccomp filtering (a ``Seccomp:`` line in /proc/self/status,
    as containerd's ``seccomp.IsEnabled``)."""
    try:
        with open("/proc/self/status") as f:
            return any(line.startswith("Seccomp:") for line in f)
    except OSError:
        return False


def default_profile(bounding_caps: Iterable[str], *, machine: str | None = None,
                    kernel: tuple[int, int] | None = None) -> dict[str, Any]:
    """containerd's default profile for a process whose bounding set is ``bounding_caps``.

    ``machine``: ``os.uname().machine`` style (x86_64, aarch64, ...; default: this host);
    ``kernel``: (major, minor) (default: this host). Shape: see the module doc.
    The profile must be computed after the spec's capabilities are final.
    """
    machine = machine or os.uname().machine
    kernel = kernel or _kernel_version()
    syscalls = [_rule(BASE_SYSCALLS)]
    # socket(2) for every family but AF_ALG and AF_VSOCK: three single-condition rules
    syscalls.append(_rule(["socket"], args=[_arg(0, AF_ALG, "SCMP_CMP_LT")]))
    syscalls.append(_rule(["socket"], args=[_arg(0, AF_ALG + 1, "SCMP_CMP_EQ")]))
    syscalls.append(_rule(["socket"], args=[_arg(0, AF_VSOCK, "SCMP_CMP_GT")]))
    for persona in PERSONAS:
        syscalls.append(_rule(["personality"], args=[_arg(0, persona, "SCMP_CMP_EQ")]))
    if kernel >= (4, 8):
        syscalls.append(_rule(["process_vm_readv", "process_vm_writev", "ptrace"]))
    if machine in ARCH_SYSCALLS:
        syscalls.append(_rule(ARCH_SYSCALLS[machine]))
    admin = False
    for cap in bounding_caps:
        names = CAP_SYSCALLS.get(cap)
        if names is None:
            continue
        admin = admin or cap == "CAP_SYS_ADMIN"
        syscalls.append(_rule(names))
    if not admin:
        flags_index = 1 if machine in ("s390", "s390x") else 0
        no_namespaces = _arg(flags_index, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ")
        syscalls.append(_rule(["clone"], args=[no_namespaces]))
        syscalls.append(_rule(["clone3"], action=ERRNO, errno_ret=errno.ENOSYS))
    return {
        "defaultAction": ERRNO,
        "architectures": list(ARCHITECTURES.get(machine, ())),
        "syscalls": syscalls,
    }


def load_profile(path: str) -> dict[str, Any]:
    """A profile file (runtime-spec ``LinuxSeccomp`` JSON), containerd ``seccomp.WithProfile``.
    InvalidArgument when it cannot be read or is not a JSON object."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InvalidArgument(f"cannot load seccomp profile {path!r}: {e}") from None
    try:
        profile = json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"decoding seccomp profile failed {path!r}: {e}") from None
    if not isinstance(profile, dict):
        raise InvalidArgument(f"decoding seccomp profile failed {path!r}: not a JSON object")
    return profile


#: legacy profile strings (kubelet's annotations era)
RUNTIME_DEFAULT = "runtime/default"
DOCKER_DEFAULT = "docker/default"
UNCONFINED = "unconfined"
LOCALHOST_PREFIX = "localhost/"


def security_profile(profile_path: str, unset_profile: str = "") -> api.SecurityProfile | None:
    """The legacy path strings as a SecurityProfile (containerd ``GenerateSeccompSecurityProfile``).

    ``runtime/default``, ``docker/default`` → RuntimeDefault; ``unconfined`` →
    Unconfined; ``localhost/<path>`` → Localhost ``<path>``. ``unset_profile`` (the
    config's ``unset_seccomp_profile``) when ``profile_path`` is empty; None when both
    are. InvalidArgument for any other string.
    """
    value = profile_path or unset_profile
    if not value:
        return None
    types = api.SecurityProfileProfileType
    if value in (RUNTIME_DEFAULT, DOCKER_DEFAULT):
        return api.SecurityProfile(profile_type=types.RuntimeDefault)
    if value == UNCONFINED:
        return api.SecurityProfile(profile_type=types.Unconfined)
    if not value.startswith(LOCALHOST_PREFIX):
        raise InvalidArgument(f"invalid profile {value!r}")
    return api.SecurityProfile(profile_type=types.Localhost, localhost_ref=value[len(LOCALHOST_PREFIX):])


def seccomp_for(profile: api.SecurityProfile | None, *, privileged: bool, bounding_caps: Iterable[str],
                enabled: bool | None = None) -> dict[str, Any] | None:
    """The ``linux.seccomp`` object to set, or None for none (containerd ``GenerateSeccompSpecOpts``).

    Privileged: none. Seccomp unsupported (``enabled`` False; default:
    :func:`seccomp_enabled`): none, InvalidArgument ("seccomp is not supported") unless
    the profile is Unconfined or absent. Absent → none. RuntimeDefault →
    :func:`default_profile` of ``bounding_caps``; Unconfined → none; Localhost → the file
    at ``localhost_ref`` (a ``localhost/`` prefix is trimmed). InvalidArgument for a
    ``localhost_ref`` on another type or an unknown type.
    """
    if privileged:
        return None
    types = api.SecurityProfileProfileType
    if enabled is None:
        enabled = seccomp_enabled()
    if not enabled:
        if profile is not None and profile.profile_type != types.Unconfined:
            raise InvalidArgument("seccomp is not supported")
        return None
    if profile is None:
        return None
    if profile.profile_type != types.Localhost and profile.localhost_ref:
        raise InvalidArgument("seccomp config invalid LocalhostRef must only be set if "
                              "ProfileType is Localhost")
    if profile.profile_type == types.Unconfined:
        return None
    if profile.profile_type == types.RuntimeDefault:
        return default_profile(bounding_caps)
    if profile.profile_type == types.Localhost:
        return load_profile(profile.localhost_ref.removeprefix(LOCALHOST_PREFIX))
    raise InvalidArgument("seccomp unknown ProfileType")
