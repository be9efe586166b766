"""Session fixtures: what a series builds or starts once, before the rounds, for every run.

A scenario lists what it needs in ``Scenario.needs``; the runner calls
:func:`provide` with the union of the selected scenarios' needs before the
warm-up and tears it down after the last round, and every
:class:`~tests.bench.daemons.Running` carries the result as ``run.fixtures``.
Nothing is started when no selected scenario needs it.

Known needs:

``LARGE_IMAGE``
    One real ``docker-registry`` (:class:`tests.support.registry.Registry`)
    on loopback, storage in the series' temporary folder, holding
    ``large_image(total_mb=500, layers=7)`` (gzip; 500 MiB of files, about
    317 MB compressed) pushed once as ``<host>/bench/large:500mb-7l-gzip``.
    The image is built once and cached in ``tests/bench/results/cache/``
    (git-ignored; about 300 MB, reused by later series; delete it to rebuild).
    Scenarios read ``run.fixtures.large_ref`` and ``run.fixtures.large_image``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.images import Image
    from tests.support.registry import Registry

CACHE = Path(__file__).parent / "results" / "cache"
LARGE_IMAGE = "large image in a loopback registry"
KNOWN = frozenset({LARGE_IMAGE})

LARGE_MB = 500
LARGE_LAYERS = 7
LARGE_REPO = "bench/large"
LARGE_TAG = f"{LARGE_MB}mb-{LARGE_LAYERS}l-gzip"


class FixtureError(RuntimeError):
    """A fixture could not be set up (image build or push failed...): the series stops."""


class FixtureMissing(FixtureError):
    """A fixture needs a tool this machine does not have: its scenarios show n/a."""


@dataclasses.dataclass
class Fixtures:
    """What :func:`provide` set up; fields stay None/empty when not needed."""

    registry: Registry | None = None
    #: the large image (file-backed blobs in the cache) and its reference in ``registry``
    large_image: Image | None = None
    large_ref: str = ""
    #: what setting up took, for the JSON (seconds per step)
    setup_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    #: needs that cannot be met on this machine (a tool is not installed) and why;
    #: their scenarios show n/a instead of failing the series
    missing: dict[str, str] = dataclasses.field(default_factory=dict)

    def large(self) -> tuple[str, Image]:
        """(reference, image) of the large image; FixtureError if it was not set up."""
        if LARGE_IMAGE in self.missing:
            raise FixtureMissing(self.missing[LARGE_IMAGE])
        if self.large_image is None or not self.large_ref:
            raise FixtureError(f"the scenario did not declare needs={{{LARGE_IMAGE!r}}}")
        return self.large_ref, self.large_image

    def describe(self) -> dict[str, object]:
        """For the results document."""
        out: dict[str, object] = {"setup_seconds": {k: round(v, 2) for k, v in self.setup_seconds.items()},
                                  "missing": dict(self.missing)}
        if self.large_image is not None:
            blobs = self.large_image.blobs.values()
            out["large_image"] = {
                "ref": self.large_ref, "digest": self.large_image.digest,
                "layers": len(self.large_image.layers),
                "compressed_bytes": sum(b.size for b in blobs),
                "uncompressed_mib": LARGE_MB, "compression": "gzip"}
        return out


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def provide(needs: Iterable[str], folder: Path, cache: Path = CACHE) -> AsyncIterator[Fixtures]:
    """Set up ``needs`` (registry storage under ``folder``), yield them, tear them down."""
    needs = set(needs)
    unknown = needs - KNOWN
    if unknown:
        raise FixtureError(f"unknown fixtures {sorted(unknown)}; known: {sorted(KNOWN)}")
    fx = Fixtures()
    if not needs:
        yield fx
        return
    # imported here: the startup scenarios need neither the registry nor the image builder
    from tests.support.images import large_image, push
    from tests.support.registry import Registry, registry_available

    if not registry_available():
        fx.missing[LARGE_IMAGE] = "/usr/bin/docker-registry not found (apt-get install docker-registry)"
        _say(f"SKIP fetch scenarios: {fx.missing[LARGE_IMAGE]}")
        yield fx
        return
    t0 = time.perf_counter()
    try:
        image = await asyncio.to_thread(large_image, cache, total_mb=LARGE_MB, layers=LARGE_LAYERS,
                                        compression="gzip")
    except Exception as e:
        raise FixtureError(f"building the large image in {cache}: {e!r}") from e
    fx.setup_seconds["build or load large image"] = time.perf_counter() - t0
    registry = Registry(folder / "registry")
    try:
        await registry.start()
        t0 = time.perf_counter()
        await push(registry.host, LARGE_REPO, LARGE_TAG, image)
        fx.setup_seconds["push large image"] = time.perf_counter() - t0
    except Exception as e:
        await registry.stop()
        raise FixtureError(f"registry with the large image: {e!r}\n{registry.log_text()[-2000:]}") from e
    try:
        fx.registry, fx.large_image = registry, image
        fx.large_ref = f"{registry.host}/{LARGE_REPO}:{LARGE_TAG}"
        size = sum(b.size for b in image.blobs.values())
        _say(f"registry on {registry.host} holds {fx.large_ref} ({size / 1e6:.0f} MB compressed, "
             f"{len(image.layers)} layers; pushed in {fx.setup_seconds['push large image']:.1f} s)")
        yield fx
    finally:
        await registry.stop()
