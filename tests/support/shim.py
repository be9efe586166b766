"""Fixtures for the shim's unit tests (import them into a test module to use them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aiocontainerd.runtimes.aiorunc.reaper import Reaper


@pytest.fixture
async def reaper() -> AsyncIterator[Reaper]:
    """A Reaper installed on the test's loop, without the subreaper flag (that would change
    the pytest process itself); uninstalled after the test."""
    r = Reaper()
    r.install(asyncio.get_running_loop(), subreaper=False)
    try:
        yield r
    finally:
        r.uninstall()
