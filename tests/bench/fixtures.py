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

``USR_IMAGE``
    The same registry (started once for both), holding the real-files image of
    :mod:`tests.bench.usrimage` (this host's ``/usr`` subtrees in 7 layers,
    about 1.4 GiB of tar) twice: gzip as ``<host>/bench/usr:<layers>l-gzip``
    and zstd as ``...-zstd``, same diff IDs. Built once and cached in
    ``tests/bench/results/cache/usr-*`` (about 1 GB for both). Scenarios call
    ``run.fixtures.usr(compression)`` for (reference, image) and read
    ``run.fixtures.usr_image`` for the layer statistics.

``BUSYBOX_IMAGE``
    The same registry (started once for all), holding the tests' one-layer busybox-static
    image (:func:`tests.support.images.busybox_image`) as ``<host>/bench/busybox:1``: what the
    container scenarios run. Scenarios call ``run.fixtures.busybox()`` for the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.images import Image
    from tests.support.registry import Registry

    from .usrimage import UsrImage

CACHE = Path(__file__).parent / "results" / "cache"
LARGE_IMAGE = "large image in a loopback registry"
USR_IMAGE = "real-files image (gzip and zstd) in a loopback registry"
BUSYBOX_IMAGE = "busybox image in a loopback registry"
#: CRI images (pause, busybox) pushed by the suite to a loopback registry, hosts.toml mirrors of
#: registry.k8s.io to it and a private CNI bridge per daemon (tests.bench.cri)
CRI_SETUP = "CRI images in a loopback registry, mirrors, a CNI bridge per daemon"
KNOWN = frozenset({LARGE_IMAGE, USR_IMAGE, BUSYBOX_IMAGE, CRI_SETUP})
REGISTRY_NEEDS = frozenset({LARGE_IMAGE, USR_IMAGE, BUSYBOX_IMAGE})

LARGE_MB = 500
LARGE_LAYERS = 7
LARGE_REPO = "bench/large"
LARGE_TAG = f"{LARGE_MB}mb-{LARGE_LAYERS}l-gzip"
USR_REPO = "bench/usr"
BUSYBOX_REPO = "bench/busybox"


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
    #: the real-files image (both variants, layer statistics) and its reference per compression
    usr_image: UsrImage | None = None
    usr_refs: dict[str, str] = dataclasses.field(default_factory=dict)
    #: the busybox image's reference in ``registry``
    busybox_ref: str = ""
    #: the CRI setup (tests.bench.cri.CRIFixture) when CRI_SETUP was needed
    cri: Any = None
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

    def usr(self, compression: str) -> tuple[str, Image]:
        """(reference, image) of the real-files image in ``compression``; FixtureError if not set up."""
        if USR_IMAGE in self.missing:
            raise FixtureMissing(self.missing[USR_IMAGE])
        if self.usr_image is None or compression not in self.usr_refs:
            raise FixtureError(f"the scenario did not declare needs={{{USR_IMAGE!r}}}")
        return self.usr_refs[compression], self.usr_image.images[compression]

    def busybox(self) -> str:
        """The reference of the busybox image; FixtureError if it was not set up."""
        if BUSYBOX_IMAGE in self.missing:
            raise FixtureMissing(self.missing[BUSYBOX_IMAGE])
        if not self.busybox_ref:
            raise FixtureError(f"the scenario did not declare needs={{{BUSYBOX_IMAGE!r}}}")
        return self.busybox_ref

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
        if self.busybox_ref:
            out["busybox_image"] = {"ref": self.busybox_ref}
        if self.usr_image is not None:
            out["usr_image"] = {"refs": dict(self.usr_refs), **self.usr_image.describe()}
        if self.cri is not None:
            out["cri"] = self.cri.describe()
        return out


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def provide(needs: Iterable[str], folder: Path, cache: Path = CACHE) -> AsyncIterator[Fixtures]:
    """Set up ``needs`` (registry storage under ``folder``), yield them, tear them down."""
    needs = set(needs)
    async with _provide(needs - {CRI_SETUP}, folder, cache) as fx:
        if CRI_SETUP not in needs:
            yield fx
            return
        from .cri import cri_fixture

        async with cri_fixture(folder / "cri", fx) as fx.cri:
            yield fx


@contextlib.asynccontextmanager
async def _provide(needs: set[str], folder: Path, cache: Path) -> AsyncIterator[Fixtures]:
    unknown = needs - KNOWN
    if unknown:
        raise FixtureError(f"unknown fixtures {sorted(unknown)}; known: {sorted(KNOWN)}")
    fx = Fixtures()
    if not needs & REGISTRY_NEEDS:
        yield fx
        return
    # imported here: the startup scenarios need neither the registry nor the image builders
    from tests.support.images import large_image, push
    from tests.support.registry import Registry, registry_available

    if not registry_available():
        for need in needs & REGISTRY_NEEDS:
            fx.missing[need] = "/usr/bin/docker-registry not found (apt-get install docker-registry)"
        _say(f"SKIP registry scenarios: {next(iter(fx.missing.values()))}")
        yield fx
        return
    image = None
    if LARGE_IMAGE in needs:
        t0 = time.perf_counter()
        try:
            image = await asyncio.to_thread(large_image, cache, total_mb=LARGE_MB, layers=LARGE_LAYERS,
                                            compression="gzip")
        except Exception as e:
            raise FixtureError(f"building the large image in {cache}: {e!r}") from e
        fx.setup_seconds["build or load large image"] = time.perf_counter() - t0
    usr = None
    if USR_IMAGE in needs:
        from .usrimage import UsrImageError, usr_image

        t0 = time.perf_counter()
        try:
            usr = await asyncio.to_thread(usr_image, cache, say=_say)
        except UsrImageError as e:
            fx.missing[USR_IMAGE] = str(e)
            _say(f"SKIP real-files image scenarios: {e}")
        except Exception as e:
            raise FixtureError(f"building the real-files image in {cache}: {e!r}") from e
        fx.setup_seconds["build or load real-files image"] = time.perf_counter() - t0
    registry = Registry(folder / "registry")
    try:
        await registry.start()
        if image is not None:
            t0 = time.perf_counter()
            await push(registry.host, LARGE_REPO, LARGE_TAG, image)
            fx.setup_seconds["push large image"] = time.perf_counter() - t0
            fx.large_image = image
            fx.large_ref = f"{registry.host}/{LARGE_REPO}:{LARGE_TAG}"
            size = sum(b.size for b in image.blobs.values())
            _say(f"registry on {registry.host} holds {fx.large_ref} ({size / 1e6:.0f} MB compressed, "
                 f"{len(image.layers)} layers; pushed in {fx.setup_seconds['push large image']:.1f} s)")
        if BUSYBOX_IMAGE in needs:
            from tests.support.images import busybox_image

            await push(registry.host, BUSYBOX_REPO, "1", busybox_image())
            fx.busybox_ref = f"{registry.host}/{BUSYBOX_REPO}:1"
            _say(f"registry on {registry.host} holds {fx.busybox_ref} (busybox-static, one layer)")
        if usr is not None:
            t0 = time.perf_counter()
            for compression, img in usr.images.items():
                tag = f"{len(img.layers)}l-{compression}"
                await push(registry.host, USR_REPO, tag, img)
                fx.usr_refs[compression] = f"{registry.host}/{USR_REPO}:{tag}"
            fx.setup_seconds["push real-files image"] = time.perf_counter() - t0
            fx.usr_image = usr
            _say(f"registry on {registry.host} holds {', '.join(fx.usr_refs.values())} "
                 f"({usr.tar_bytes / 1e6:.0f} MB of tar in {len(usr.layers)} layers; "
                 + ", ".join(f"{c} {usr.compressed_bytes(c) / 1e6:.0f} MB" for c in usr.images)
                 + f"; pushed in {fx.setup_seconds['push real-files image']:.1f} s)")
    except Exception as e:
        await registry.stop()
        raise FixtureError(f"registry with the bench images: {e!r}\n{registry.log_text()[-2000:]}") from e
    try:
        fx.registry = registry
        yield fx
    finally:
        await registry.stop()
