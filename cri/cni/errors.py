"""Errors of the CNI library, each a :class:`aiocontainerd.errors.ContainerdError`.

- :class:`CNIError` — a plugin failed: it exited non-zero (with the CNI *Error*
  result of SPEC.md section 5 on stdout, or text on stderr), timed out, or
  printed something that is not a result.
- :class:`ConfigError` — a network configuration (SPEC.md section 1) is
  malformed or asks for a CNI version we do not speak.
- :class:`NotInitialized` — no network configuration is loaded yet; its text is
  containerd's (go-cni) ``cni plugin not initialized``.
- :class:`PluginNotFound` — the ``type`` of a plugin is not an executable in
  any plugin directory.
"""

from __future__ import annotations

from aiocontainerd import errors

#: Well-known error codes of SPEC.md section 5 ("Error").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_LIMITED = 51

#: code reported by this library (not by a plugin) when a plugin timed out
TIMEOUT = -1
#: code reported when the plugin failed without a parsable CNI error
NO_ERROR_RESULT = 0

NOT_INITIALIZED_MESSAGE = "cni plugin not initialized"


class CNIError(errors.ContainerdError):
    """A CNI plugin failed.

    Attributes: ``code`` (the plugin's CNI error code, :data:`TIMEOUT` or
    :data:`NO_ERROR_RESULT`), ``msg``, ``details`` (from the plugin's error
    JSON), ``plugin`` (its ``type``), ``command`` (ADD/DEL/CHECK/VERSION/STATUS),
    ``network`` (the network name), ``stderr`` (what the plugin logged).
    ``str(e)`` reads like libcni's: ``plugin type="bridge" failed (add): <msg>; <details>``.
    The gRPC code (``grpc_code``) is UNKNOWN, or DEADLINE_EXCEEDED for a timeout.
    """

    def __init__(self, msg: str, *, code: int = NO_ERROR_RESULT, details: str = "",
                 plugin: str = "", command: str = "", network: str = "", stderr: str = "") -> None:
        self.cni_code = code
        self.msg = msg
        self.details = details
        self.plugin = plugin
        self.command = command
        self.network = network
        self.stderr = stderr
        text = msg + (f"; {details}" if details else "")
        if plugin or command:
            text = f"plugin type={plugin!r} failed ({command.lower()}): {text}"
        super().__init__(text)
        if code == TIMEOUT:
            self.code = errors.Status.DEADLINE_EXCEEDED


class ConfigError(errors.InvalidArgument):
    """An invalid network configuration (go-cni's ``invalid cni config``)."""


class NotInitialized(errors.FailedPrecondition):
    """No usable network configuration is loaded (``cni plugin not initialized``)."""

    def __init__(self, message: str = NOT_INITIALIZED_MESSAGE) -> None:
        super().__init__(message)


class PluginNotFound(errors.NotFound):
    """A plugin's executable is missing from every plugin directory."""
