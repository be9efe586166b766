"""glibc heap settings shared by the daemon and the shim fork server (no-ops on other libcs)."""

from __future__ import annotations

import ctypes

#: ``mallopt`` parameter number of ``M_ARENA_MAX`` (glibc ``malloc.h``)
M_ARENA_MAX = -8


def trim() -> None:
    """``malloc_trim(0)``: hand the free pages of every malloc arena back to the kernel.

    glibc keeps freed heap resident until asked: after start-up (hundreds of modules
    imported and their temporaries freed) that is a few MiB a process would hold for good.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def one_arena() -> None:
    """``mallopt(M_ARENA_MAX, 1)``: worker threads share the main heap instead of each
    getting an arena of its own (inherited by forked children)."""
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass
