"""An idle daemon's memory: what starting it must not import, and the lazy streaming HTTP side.

The CRI streaming server listens from start-up but imports aiohttp (its HTTP side,
``cri/streaming/handlers.py``) only when a client first connects; the daemon's command
line is argparse, not click. Each of those was megabytes of an idle daemon's RSS.
"""

from __future__ import annotations

import aiohttp
import pytest

from aiocontainerd.api.runtime import v1 as runtime_v1
from aiocontainerd.cri.streaming import StreamingServer
from tests.support.imports import loaded


def test_daemon_and_cri_do_not_import_aiohttp_or_click() -> None:
    code = ("import aiocontainerd.cli.daemon, aiocontainerd.cri.service, aiocontainerd.cri.streaming\n"
            "from aiocontainerd.cri.streaming import StreamingServer")
    assert loaded(code, ("aiohttp", "click", "aiocontainerd.cri.streaming.handlers")) == []


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
