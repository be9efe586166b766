"""pytest fixtures for the real registry and its front; import them into a conftest.py::

    from tests.support.fixtures import registry, registry_front  # noqa: F401

``registry_front`` takes ``RegistryFront`` keyword arguments by indirect parametrization::

    @pytest.mark.parametrize("registry_front", [{"auth": "bearer", "users": {"u": "p"}}], indirect=True)
    async def test_pull_with_token(registry_front: RegistryFront) -> None: ...

or the test sets its attributes (``registry_front.auth = "basic"``) before use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiocontainerd.content import LocalStore
from aiocontainerd.metadata import MetadataDB
from aiocontainerd.metadata.gc import GarbageCollector
from aiocontainerd.metadata.plugin import Metadata
from aiocontainerd.metadata.scheduler import Scheduler, SchedulerConfig
from tests.support.registry import REGISTRY_BINARY, Registry, RegistryFront, registry_available


def need_registry() -> None:
    """Skip the test unless Debian's docker-registry is installed."""
    if not registry_available():
        pytest.skip(f"{REGISTRY_BINARY} is missing: apt-get install docker-registry (CNCF distribution)")


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    """A running ``docker-registry`` on 127.0.0.1 with empty storage; stopped after the test."""
    need_registry()
    async with Registry() as r:
        yield r


@pytest.fixture
async def registry_front(registry: Registry, request: pytest.FixtureRequest) -> AsyncIterator[RegistryFront]:
    """A ``RegistryFront`` (no auth unless parametrized) before ``registry``; stopped after the test."""
    options = getattr(request, "param", None) or {}
    async with RegistryFront(registry, **options) as front:
        yield front


@pytest.fixture
async def metadata(tmp_path: Path) -> AsyncIterator[Metadata]:
    """Metadata on an LMDB and a local content store in ``tmp_path``; its GC scheduler waits an
    hour before any collection (tests trigger it themselves)."""
    db = MetadataDB.open(tmp_path / "db", map_size=256 << 20)
    m = Metadata(db, LocalStore(tmp_path / "content"))
    m.scheduler = Scheduler(GarbageCollector(db, m.content), SchedulerConfig(startup_delay="1h"))
    yield m
    await m.scheduler.close()
    db.close()
