"""Errors of the core, each carrying the gRPC status code containerd uses for it.

The core raises these; ``services/`` turns them into gRPC statuses on the wire
(containerd's ``errdefs`` mapping), and ``client/`` turns statuses back into
them, so a caller of either side catches the same classes.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator


class Code(enum.IntEnum):
    """gRPC status codes (grpc/grpc doc/statuscodes.md); equal to grpclib's ``Status``.

    Kept here rather than taken from grpclib so the shim and the ttrpc layer,
    which must not import grpclib, share the core's errors.
    """

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


Status = Code


class ContainerdError(Exception):
    """Base of every error the core raises on purpose; ``code`` is its gRPC status."""

    code: Status = Status.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ContainerdError):
    """The request is malformed: a bad name, label, filter or field (INVALID_ARGUMENT)."""

    code = Status.INVALID_ARGUMENT


class NotFound(ContainerdError):
    """The named object does not exist (NOT_FOUND)."""

    code = Status.NOT_FOUND


class AlreadyExists(ContainerdError):
    """An object with that name exists already (ALREADY_EXISTS)."""

    code = Status.ALREADY_EXISTS


class FailedPrecondition(ContainerdError):
    """The object is in a state that forbids the operation, e.g. a non-empty namespace."""

    code = Status.FAILED_PRECONDITION


class Unavailable(ContainerdError):
    """The resource is busy or not ready, e.g. an ingest ref locked by another writer."""

    code = Status.UNAVAILABLE


class Unimplemented(ContainerdError):
    """The operation is not implemented by this daemon or plugin (UNIMPLEMENTED)."""

    code = Status.UNIMPLEMENTED


class Aborted(ContainerdError):
    """A conflicting concurrent change aborted the operation (ABORTED)."""

    code = Status.ABORTED


class DeadlineExceeded(ContainerdError):
    """The operation did not finish before its deadline (DEADLINE_EXCEEDED)."""

    code = Status.DEADLINE_EXCEEDED


class Canceled(ContainerdError):
    """The caller cancelled the operation (CANCELLED)."""

    code = Status.CANCELLED


class Internal(ContainerdError):
    """An invariant broke inside the daemon or a shim (INTERNAL)."""

    code = Status.INTERNAL


#: the class of each code; codes without one are raised as :class:`ContainerdError`
BY_CODE: dict[Status, type[ContainerdError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Unavailable,
                Unimplemented, Aborted, DeadlineExceeded, Canceled, Internal)
}


def from_status(code: int, message: str) -> ContainerdError:
    """The core error for a status received from a server (client side): the class of its
    code, else :class:`ContainerdError` carrying the code (``e.code`` is always the wire's)."""
    try:
        c = Code(getattr(code, "value", code))
    except ValueError:
        c = Code.UNKNOWN
    err = BY_CODE.get(c, ContainerdError)(message)
    if type(err) is ContainerdError:
        err.code = c
    return err


@contextlib.contextmanager
def reworded(prefix: str) -> Iterator[None]:
    """Re-raise a :class:`ContainerdError` from the block as ``"<prefix>: <message>"`` with
    the same code (Go's ``fmt.Errorf("<prefix>: %w", err)``, as containerd words the
    errors it passes on: ``failed to create shim task: ...``); a subclass of a code is
    raised again as that code's class."""
    try:
        yield
    except ContainerdError as e:
        raise from_status(e.code, f"{prefix}: {e.message}") from None
