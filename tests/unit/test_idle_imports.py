"""An idle daemon's memory: what starting it must not import, and the lazy streaming HTTP side.

The CRI streaming server listens from start-up but imports aiohttp (its HTTP side,
``cri/streaming/handlers.py``) only when a client first connects; the daemon's command
line is argparse, not click; prometheus_client loads when metrics are first rendered
or ``[metrics] address`` is set (:mod:`aiocontainerd.metrics`). Each of those was
megabytes of an idle daemon's RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from aiocontainerd.api.runtime import v1 as runtime_v1
from aiocontainerd.cri.streaming import StreamingServer
from tests.support import cri as support
from tests.support.imports import loaded


def test_daemon_and_cri_do_not_import_aiohttp_or_click() -> None:
    code = ("import aiocontainerd.cli.daemon, aiocontainerd.cri.service, aiocontainerd.cri.streaming\n"
            "from aiocontainerd.cri.streaming import StreamingServer")
    assert loaded(code, ("aiohttp", "click", "aiocontainerd.cri.streaming.handlers")) == []


_IDLE = """
import asyncio, json, sys
from aiocontainerd import builtins
from aiocontainerd.config import load
from aiocontainerd.daemon import Daemon

async def main():
    daemon = Daemon(load(sys.argv[1], builtins.config_types()))
    await daemon.start()
    try:
        await asyncio.sleep(0.2)
        print(json.dumps({"address": daemon.metrics_address,
                          "modules": [m for m in sys.modules if m.split(".")[0] == "prometheus_client"]}))
    finally:
        await daemon.stop()

asyncio.run(main())
"""


@pytest.mark.skipif(support.cri_unusable() is not None, reason=str(support.cri_unusable()))
@pytest.mark.parametrize("metrics_address", [None, "127.0.0.1:0"])
def test_idle_daemon_loads_prometheus_client_only_with_a_metrics_address(
        tmp_path: Path, metrics_address: str | None) -> None:
    """The real daemon with the CRI plugin, started and idle: prometheus_client only when serving metrics."""
    net = support.write_cni_conflist(tmp_path / "net.d")
    try:
        cfg = tmp_path / "config.toml"
        metrics = f'[metrics]\naddress = "{metrics_address}"\n\n' if metrics_address else ""
        cfg.write_text(f'version = 3\nroot = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n\n'
                       f'[grpc]\naddress = "{tmp_path}/state/aiocontainerd.sock"\n\n{metrics}'
                       + support.cri_config(cni=net, stream_port=0))
        out = subprocess.run([sys.executable, "-c", _IDLE, str(cfg)], capture_output=True, text=True,
                             timeout=60, check=True)
    finally:
        net.cleanup()
    idle = json.loads(out.stdout.splitlines()[-1])
    if metrics_address is None:
        assert idle == {"address": None, "modules": []}
    else:
        assert idle["address"] and "prometheus_client" in idle["modules"]


class _NoRuntime:
    """A StreamRuntime that is never called: these requests never reach it."""


@pytest.fixture
async def server():
    async with StreamingServer(_NoRuntime(), linger=0.1) as srv:  # type: ignore[arg-type]
        yield srv


async def test_routes_as_kubelet(server: StreamingServer) -> None:
    """404 off the routes and for unknown tokens, 405 for other methods, as aiohttp's router did."""
    url = server.get_exec(runtime_v1.ExecRequest(container_id="c", cmd=["true"], stdout=True)).url
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/exec", "/exec/", "/nothing/abc", "/exec/abc/more", "/exec/unknown"):
            async with http.get(server.url + path) as resp:
                assert resp.status == 404, path
        async with http.put(url) as resp:
            assert resp.status == 405
            assert set(resp.headers["Allow"].split(",")) == {"GET", "POST"}
        async with http.get(url) as resp:  # a known token without an upgrade: consumed, refused
            assert resp.status == 400
