"""Shim binaries: runtime-name resolution, the ``start``/``delete`` commands, start responses.

Follows containerd's ``core/runtime/v2`` (``binary.go``, ``shim_manager.go``
``resolveRuntimePath``) and ``pkg/shim`` (``Command``, ``BinaryName``):

- A runtime name ``io.containerd.<name>.<version>`` names the shim binary
  ``containerd-shim-<name>-<version>``; an absolute path names the binary itself.
- ``<shim> -namespace NS -address GRPC -publish-binary SELF -id ID [-bundle B] [-debug] start|delete``
  runs with the bundle as working directory and these variables added to the
  daemon's environment: ``TTRPC_ADDRESS`` (the daemon's ``<socket>.ttrpc``),
  ``GRPC_ADDRESS``, ``NAMESPACE``, ``MAX_SHIM_VERSION=2`` (1.6 shims speak task
  API v2) and ``GOMAXPROCS=2``. ``start`` gets the runtime options ``Any`` on
  stdin (as 1.6 passes them) and prints the shim's ttrpc address.
- The printed address is either plain (``unix:///run/containerd/s/<hash>``) or
  the JSON bootstrap form ``{"version": 2, "address": "...", "protocol": "ttrpc"}``.
- ``delete`` (run after a failed start, or for a shim that died) prints a
  ``containerd.task.v2.DeleteResponse``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys

from aiocontainerd.api.containerd.task import v2 as taskapi
from aiocontainerd.errors import ContainerdError, FailedPrecondition, InvalidArgument, NotFound, Unimplemented

log = logging.getLogger(__name__)

#: our own shim, the default behind ``io.containerd.runc.v2`` and ``io.containerd.aiorunc.v2``
AIORUNC_SHIM = "containerd-shim-aiorunc-v2"
#: runtime names served by our shim unless the config names another binary
AIORUNC_RUNTIMES = ("io.containerd.runc.v2", "io.containerd.aiorunc.v2")
#: the task API versions we speak over ttrpc (``containerd.task.v<N>.Task``)
SUPPORTED_VERSIONS = (2, 3)
START_TIMEOUT = 30.0     # seconds for ``<shim> start``
DELETE_TIMEOUT = 10.0    # seconds for ``<shim> delete``


class ShimError(FailedPrecondition):
    """``<shim> start``/``delete`` failed; the message carries the shim's own output."""


def binary_name(runtime: str) -> str:
    """``io.containerd.runc.v2`` → ``containerd-shim-runc-v2``; "" for an invalid name.

    As containerd: the last two dot-separated parts are the name and version.
    """
    parts = runtime.split(".")
    if len(parts) < 2 or not parts[0]:
        return ""
    return f"containerd-shim-{parts[-2]}-{parts[-1]}"


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _lookup(name: str, extra_dirs: tuple[str, ...]) -> str | None:
    """``name`` on PATH, else in one of ``extra_dirs`` (the venv's bin next to the interpreter)."""
    found = shutil.which(name)
    if found:
        return os.path.abspath(found)
    for d in extra_dirs:
        candidate = os.path.join(d, name)
        if _executable(candidate):
            return os.path.abspath(candidate)
    return None


def resolve(runtime: str, explicit: dict[str, str] | None = None, *,
            extra_dirs: tuple[str, ...] | None = None) -> str:
    """The absolute path of the shim binary serving runtime ``runtime``.

    Order: ``explicit[runtime]`` (config ``path``); an absolute ``runtime`` itself;
    for ``io.containerd.runc.v2``/``io.containerd.aiorunc.v2`` our
    ``containerd-shim-aiorunc-v2``; otherwise ``containerd-shim-<name>-<version>``.
    Binaries are looked up on PATH, then next to ``sys.executable`` (``extra_dirs``).

    Raises InvalidArgument (malformed name), NotFound (binary not installed).
    """
    dirs = extra_dirs if extra_dirs is not None else (os.path.dirname(sys.executable),)
    if not runtime:
        raise InvalidArgument("no runtime name")
    path = (explicit or {}).get(runtime)
    if path:
        if not _executable(path):
            raise NotFound(f"runtime {runtime!r}: configured shim {path!r} is not an executable file")
        return os.path.abspath(path)
    if os.path.isabs(runtime):
        if not _executable(runtime):
            raise NotFound(f"invalid custom binary path {runtime!r}: not an executable file")
        return runtime
    if "/" in runtime:
        raise InvalidArgument(f"invalid runtime name {runtime}, correct runtime name should be "
                              "either format like `io.containerd.runc.v2` or a full path to the binary")
    name = binary_name(runtime)
    if not name:
        raise InvalidArgument(f"invalid runtime name {runtime}, correct runtime name should be "
                              "either format like `io.containerd.runc.v2` or a full path to the binary")
    if runtime in AIORUNC_RUNTIMES:
        name = AIORUNC_SHIM
    found = _lookup(name, dirs)
    if found is None:
        raise NotFound(f"runtime {runtime!r} binary not installed {name!r}")
    return found


def publish_binary() -> str:
    """The path shims are told to publish events with (``-publish-binary``): our daemon's
    console script next to the interpreter, else the interpreter (1.6+ shims ignore it and
    use ``TTRPC_ADDRESS``)."""
    candidate = os.path.join(os.path.dirname(sys.executable), "aiocontainerd")
    return candidate if _executable(candidate) else sys.executable


@dataclasses.dataclass(frozen=True)
class StartResult:
    """A shim's printed start response: its task API ``version``, ``address``, ``protocol``."""

    address: str
    version: int = 2
    protocol: str = "ttrpc"

    @property
    def service(self) -> str:
        """The ttrpc service name of the task API: ``containerd.task.v2.Task``."""
        return f"containerd.task.v{self.version}.Task"

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "address": self.address, "protocol": self.protocol})


def parse_start_response(out: bytes | str) -> StartResult:
    """Parse ``<shim> start`` output: a plain address or the JSON bootstrap form.

    JSON with ``version`` < 2 or a non-object is read as a plain address (as containerd).
    Raises InvalidArgument (empty), Unimplemented (a version or protocol we do not speak).
    """
    text = (out.decode(errors="replace") if isinstance(out, bytes) else out).strip()
    if not text:
        raise InvalidArgument("shim start printed no address")
    result = StartResult(text)
    try:
        params = json.loads(text)
    except ValueError:
        params = None
    if isinstance(params, dict) and isinstance(params.get("version"), int) and params["version"] >= 2:
        result = StartResult(str(params.get("address", "")), params["version"],
                             str(params.get("protocol") or "ttrpc"))
    if result.version not in SUPPORTED_VERSIONS:
        raise Unimplemented(f"unsupported shim version ({result.version}): not implemented")
    if result.protocol.lower() != "ttrpc":
        raise Unimplemented(f"unexpected shim protocol {result.protocol!r}: only ttrpc is supported")
    if not result.address:
        raise InvalidArgument("shim start response has no address")
    return result


@dataclasses.dataclass(frozen=True)
class ShimCommand:
    """How to run one shim binary for one bundle (containerd's ``shim.CommandConfig``)."""

    binary: str
    id: str
    namespace: str
    bundle: str
    grpc_address: str
    ttrpc_address: str
    debug: bool = False
    env: tuple[str, ...] = ()

    def argv(self, action: str, *, with_bundle: bool = False) -> list[str]:
        """``[binary, -namespace NS, -address A, -publish-binary P, -id ID, (-bundle B), (-debug),
        action]``."""
        args = [self.binary, "-namespace", self.namespace, "-address", self.grpc_address,
                "-publish-binary", publish_binary(), "-id", self.id]
        if with_bundle:
            args += ["-bundle", self.bundle]
        if self.debug:
            args.append("-debug")
        args.append(action)
        return args

    def environ(self) -> dict[str, str]:
        """The daemon's environment plus the shim variables (see the module doc)."""
        env = dict(os.environ)
        env.update({"GOMAXPROCS": "2", "MAX_SHIM_VERSION": "2",
                    "TTRPC_ADDRESS": self.ttrpc_address, "GRPC_ADDRESS": self.grpc_address,
                    "NAMESPACE": self.namespace})
        for item in self.env:
            k, _, v = item.partition("=")
            env[k] = v
        return env

    async def _run(self, argv: list[str], stdin: bytes, limit: float) -> tuple[int, bytes, bytes]:
        """Run ``argv`` in the bundle; returns (exit code, stdout, stderr).

        Output is read until the command exits, then for at most one more second: a
        shim that forks its server may leave the pipes open in the child.
        """
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=self.bundle, env=self.environ(), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, process_group=0)
        out, err = bytearray(), bytearray()

        async def drain(stream: asyncio.StreamReader | None, buf: bytearray) -> None:
            if stream is None:
                return
            while chunk := await stream.read(65536):
                buf += chunk

        async def feed() -> None:
            assert proc.stdin is not None
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                if stdin:
                    proc.stdin.write(stdin)
                    await proc.stdin.drain()
                proc.stdin.close()

        readers = [asyncio.ensure_future(drain(proc.stdout, out)),
                   asyncio.ensure_future(drain(proc.stderr, err))]
        try:
            await feed()
            try:
                code = await asyncio.wait_for(proc.wait(), limit)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise ShimError(f"{os.path.basename(argv[0])} {argv[-1]}: timed out after "
                                f"{limit:g}s: {bytes(err).decode(errors='replace').strip()}") from None
            await asyncio.wait(readers, timeout=1.0)
        finally:
            for r in readers:
                r.cancel()
            for r in readers:
                with contextlib.suppress(asyncio.CancelledError):
                    await r
        return code, bytes(out), bytes(err)

    async def start(self, options: bytes = b"", limit: float = START_TIMEOUT) -> StartResult:
        """Run ``<shim> ... start``; ``options``: the serialised runtime options ``Any``.

        Raises ShimError (non-zero exit, with the shim's stderr/stdout) and the errors of
        :func:`parse_start_response`.
        """
        code, out, err = await self._run(self.argv("start"), options, limit)
        if code != 0:
            detail = (err.strip() or out.strip()).decode(errors="replace")
            raise ShimError(f"{detail}: exit status {code}" if detail else f"exit status {code}")
        if err.strip():
            log.debug("shim start stderr",
                      extra={"fields": {"id": self.id, "stderr": err.decode(errors="replace")}})
        return parse_start_response(out)

    async def delete(self, limit: float = DELETE_TIMEOUT) -> taskapi.DeleteResponse:
        """Run ``<shim> ... -bundle B delete``: the shim cleans up after itself (kills and
        deletes the container, unmounts). Returns its DeleteResponse; raises ShimError."""
        code, out, err = await self._run(self.argv("delete", with_bundle=True), b"", limit)
        if code != 0:
            detail = (err.strip() or out.strip()).decode(errors="replace")
            raise ShimError(f"{detail}: exit status {code}" if detail else f"exit status {code}")
        try:
            return taskapi.DeleteResponse.parse(out)
        except Exception as e:  # a shim that printed something else
            raise ShimError(f"shim delete printed an invalid response: {e}") from None


__all__ = ["AIORUNC_RUNTIMES", "AIORUNC_SHIM", "ContainerdError", "ShimCommand", "ShimError",
           "StartResult", "binary_name", "parse_start_response", "publish_binary", "resolve"]
