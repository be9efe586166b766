"""Running one CNI plugin binary (SPEC.md section 2, "Execution Protocol").

The plugin gets its parameters in the environment (``CNI_COMMAND``,
``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_PATH``,
added to this process's environment with any inherited ``CNI_*`` removed), the
request configuration as JSON on stdin, and answers on stdout: a result (ADD,
VERSION), nothing (DEL, CHECK, STATUS), or an *Error* object
``{"cniVersion", "code", "msg", "details"}`` with a non-zero exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import NO_ERROR_RESULT, TIMEOUT, CNIError

#: default time a single plugin execution may take
DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class RuntimeConf:
    """The attachment parameters (SPEC section 3, "Attachment Parameters").

    ``args`` are CNI_ARGS pairs in order (``[("IgnoreUnknown", "1"), ...]``);
    ``capability_args`` maps capability names (``portMappings``, ``bandwidth``,
    ``dns``, ``ipRanges``, ...) to their JSON-able values.
    """

    container_id: str
    netns: str
    ifname: str
    args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] | None = None


def plugin_env(command: str, rt: RuntimeConf | None, bin_dirs: Sequence[str]) -> dict[str, str]:
    """The environment of one execution (inherited env minus ``CNI_*``, plus the parameters)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env["CNI_COMMAND"] = command
    env["CNI_PATH"] = os.pathsep.join(bin_dirs)
    if rt is not None:
        env["CNI_CONTAINERID"] = rt.container_id
        env["CNI_NETNS"] = rt.netns
        env["CNI_IFNAME"] = rt.ifname
        if rt.args:
            env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in rt.args)
    return env


def _plugin_error(stdout: bytes, stderr: bytes, returncode: int, **where: str) -> CNIError:
    err_text = stderr.decode(errors="replace").strip()
    try:
        obj = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        obj = None
    if isinstance(obj, dict) and ("msg" in obj or "code" in obj):
        code = obj.get("code")
        return CNIError(str(obj.get("msg") or ""), code=code if isinstance(code, int) else NO_ERROR_RESULT,
                        details=str(obj.get("details") or ""), stderr=err_text, **where)
    text = err_text or stdout.decode(errors="replace").strip() or f"exit status {returncode}"
    return CNIError(text, stderr=err_text, **where)


async def exec_plugin(path: str, command: str, request: Mapping[str, Any] | None, *,
                      rt: RuntimeConf | None, bin_dirs: Sequence[str],
                      plugin_timeout: float | None = DEFAULT_TIMEOUT,
                      network: str = "") -> dict[str, Any] | None:
    """Run plugin binary ``path`` once and return its decoded stdout (None when empty).

    ``request`` is serialised to stdin. Raises :class:`CNIError` with the plugin's
    ``code``/``msg``/``details`` when it exits non-zero (its stderr kept on the
    error), with ``code == TIMEOUT`` when it ran longer than ``plugin_timeout`` seconds
    (the plugin is killed), or when its output is not a JSON object.
    """
    where = {"plugin": os.path.basename(path), "command": command, "network": network}
    stdin = json.dumps(request).encode() if request is not None else b""
    try:
        proc = await asyncio.create_subprocess_exec(
            path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=plugin_env(command, rt, bin_dirs), close_fds=True)
    except OSError as e:
        raise CNIError(f"failed to execute {path}: {e.strerror or e}", **where) from None
    try:
        async with asyncio.timeout(plugin_timeout):
            stdout, stderr = await proc.communicate(stdin)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise CNIError(f"timed out after {plugin_timeout}s", code=TIMEOUT, **where) from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    if proc.returncode != 0:
        raise _plugin_error(stdout, stderr, proc.returncode or 0, **where)
    if not stdout.strip():
        return None
    try:
        obj = json.loads(stdout)
    except ValueError as e:
        raise CNIError(f"invalid plugin output: {e}", stderr=stderr.decode(errors="replace"),
                       **where) from None
    if not isinstance(obj, dict):
        raise CNIError(f"invalid plugin output: expected a JSON object, got {obj!r}", **where)
    return obj


async def version_probe(path: str, cni_version: str, *, bin_dirs: Sequence[str],
                        plugin_timeout: float | None = DEFAULT_TIMEOUT) -> list[str]:
    """``VERSION`` (SPEC section 2): the spec versions plugin ``path`` supports.

    A plugin answering nothing is taken as supporting 0.1.0 only (libcni's rule).
    """
    out = await exec_plugin(path, "VERSION", {"cniVersion": cni_version}, rt=None,
                            bin_dirs=bin_dirs, plugin_timeout=plugin_timeout)
    if not out:
        return ["0.1.0"]
    versions = out.get("supportedVersions")
    if not isinstance(versions, list):
        return ["0.1.0"]
    return [str(v) for v in versions]
