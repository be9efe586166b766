"""CRI ImageService on the daemon's socket: the generated CRI client (and crictl) against a real registry.

An in-process daemon with the CRI plugin; Debian's ``docker-registry`` on loopback
(behind ``RegistryFront`` for authentication); ``registry.k8s.io`` mirrored to it by a
``hosts.toml`` folder (``registry.config_path``), so the sandbox image
``registry.k8s.io/pause:3.10`` comes from the loopback registry and is pinned.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpclib.const
import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from aiocontainerd import Daemon
from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.cri.config import CRIConfig, RegistryConfig
from aiocontainerd.cri.images import IMAGE_LABEL, NAMESPACE, PINNED_LABEL
from aiocontainerd.cri.plugin import URI
from aiocontainerd.plugin import METADATA
from aiocontainerd.remotes import platforms
from tests.conftest import make_config
from tests.support.cri import crictl, crictl_argv, write_hosts_dir
from tests.support.images import busybox_image, push
from tests.support.registry import Registry, RegistryFront

pytestmark = pytest.mark.integration

HOST = platforms.default()
IMAGE = busybox_image(2, platform=(HOST.os, HOST.architecture, HOST.variant))
PAUSE = busybox_image(1, "zstd", platform=(HOST.os, HOST.architecture, HOST.variant))


@pytest.fixture
async def cri(registry: Registry, tmp_short: Path) -> AsyncIterator[tuple[Daemon, api.ImageServiceStub]]:
    """A daemon whose CRI mirrors registry.k8s.io to ``registry``; and a CRI image client."""
    await push(registry.host, "library/busybox", "1.36", IMAGE)
    await push(registry.host, "pause", "3.10", PAUSE)
    hosts = write_hosts_dir(tmp_short / "certs.d", registry.host, ["registry.k8s.io"])
    config = make_config(tmp_short)
    config.plugins[URI] = CRIConfig(registry=RegistryConfig(config_path=str(hosts)))
    async with Daemon(config) as daemon:
        plugin = daemon.plugins.get(URI)
        assert plugin.ok, plugin.error
        channel = Channel(path=daemon.address)
        try:
            yield daemon, api.ImageServiceStub(channel)
        finally:
            channel.close()


def spec(ref: str) -> api.ImageSpec:
    return api.ImageSpec(image=ref)


def records(daemon: Daemon) -> dict[str, dict[str, str]]:
    """``{name: labels}`` of the image records in ``k8s.io``."""
    return {i.name: i.labels for i in daemon.plugins.instance(METADATA).images.list(NAMESPACE)}


async def test_pull_list_status_remove(registry: Registry, cri) -> None:
    daemon, images = cri
    ref = f"{registry.host}/library/busybox:1.36"
    pulled = await images.pull_image(api.PullImageRequest(image=spec(ref)))
    assert pulled.image_ref == IMAGE.config.digest  # the image ID: the config digest
    again = await images.pull_image(api.PullImageRequest(image=spec(ref)))
    assert again.image_ref == pulled.image_ref
    exposed = daemon.metrics.render().decode()
    assert 'containerd_cri_sandboxed_image_pulls_total{status="success"} 2.0' in exposed
    assert "containerd_cri_sandboxed_in_progress_image_pulls_total 0.0" in exposed
    tag, by_digest = ref, f"{registry.host}/library/busybox@{IMAGE.digest}"
    stored = records(daemon)
    assert set(stored) == {IMAGE.config.digest, tag, by_digest}
    assert all(labels == {IMAGE_LABEL: "managed"} for labels in stored.values())

    listed = (await images.list_images(api.ListImagesRequest())).images
    assert len(listed) == 1
    image = listed[0]
    assert image.id == IMAGE.config.digest
    assert image.repo_tags == [tag] and image.repo_digests == [by_digest]
    assert image.size == IMAGE.manifest.size + IMAGE.config.size + sum(x.size for x in IMAGE.layers)
    assert not image.pinned

    for name in (tag, IMAGE.config.digest, IMAGE.config.digest[7:19], by_digest):
        status = await images.image_status(api.ImageStatusRequest(image=spec(name)))
        assert status.image == image and status.info == {}, name
    verbose = await images.image_status(api.ImageStatusRequest(image=spec(tag), verbose=True))
    info = json.loads(verbose.info["info"])
    assert info["chainID"] == IMAGE.chain_ids[-1]
    assert info["imageSpec"]["rootfs"] == {"type": "layers", "diff_ids": list(IMAGE.diff_ids)}
    assert info["imageSpec"]["os"] == HOST.os

    # unpacked into the default snapshotter (overlayfs): the whole chain is in k8s.io
    sn = daemon.plugins.instance(METADATA).snapshotters["overlayfs"]
    assert {s.name for s in sn.walk(NAMESPACE)} == set(IMAGE.chain_ids)

    fs = (await images.image_fs_info(api.ImageFsInfoRequest())).image_filesystems
    assert fs[0].fs_id.mountpoint == str(Path(daemon.config.root) / "io.containerd.snapshotter.v1.overlayfs")
    assert fs[0].used_bytes.value > 0 and fs[0].inodes_used.value > 0 and fs[0].timestamp > 0
    assert fs[-1].fs_id.mountpoint == str(Path(daemon.config.root) / "io.containerd.content.v1.content")
    assert fs[-1].used_bytes.value == sum(b.size for b in IMAGE.blobs.values())

    await images.remove_image(api.RemoveImageRequest(image=spec(IMAGE.config.digest)))
    await images.remove_image(api.RemoveImageRequest(image=spec(IMAGE.config.digest)))  # idempotent
    await images.remove_image(api.RemoveImageRequest(image=spec(tag)))
    assert records(daemon) == {}
    assert await images.image_status(api.ImageStatusRequest(image=spec(tag))) == api.ImageStatusResponse()
    assert (await images.list_images(api.ListImagesRequest())).images == []
    # collected: no content or snapshot of it is left in k8s.io
    metadata = daemon.plugins.instance(METADATA)
    assert metadata.content.list(NAMESPACE) == [] and sn.walk(NAMESPACE) == []
    fs = (await images.image_fs_info(api.ImageFsInfoRequest())).image_filesystems
    assert fs[0].used_bytes.value == 0 and fs[-1].used_bytes.value == 0


async def test_pull_by_digest(registry: Registry, cri) -> None:
    daemon, images = cri
    ref = f"{registry.host}/library/busybox:ignored@{IMAGE.digest}"
    pulled = await images.pull_image(api.PullImageRequest(image=spec(ref)))
    assert pulled.image_ref == IMAGE.config.digest
    image = (await images.image_status(api.ImageStatusRequest(image=spec(IMAGE.config.digest)))).image
    assert image.repo_tags == []
    assert image.repo_digests == [f"{registry.host}/library/busybox@{IMAGE.digest}"]
    assert set(records(daemon)) == {IMAGE.config.digest, image.repo_digests[0]}


async def test_sandbox_image_mirrored_and_pinned(cri) -> None:
    daemon, images = cri
    pause = spec("registry.k8s.io/pause:3.10")
    pulled = await images.pull_image(api.PullImageRequest(image=pause))
    assert pulled.image_ref == PAUSE.config.digest
    image = (await images.image_status(api.ImageStatusRequest(image=pause))).image
    assert image.pinned
    assert image.repo_tags == ["registry.k8s.io/pause:3.10"]
    assert image.repo_digests == [f"registry.k8s.io/pause@{PAUSE.digest}"]
    for labels in records(daemon).values():
        assert labels == {IMAGE_LABEL: "managed", PINNED_LABEL: "pinned"}
    # pinned images stay through garbage collection (images are GC roots)
    await daemon.plugins.instance(METADATA).collect()
    assert (await images.image_status(api.ImageStatusRequest(image=spec(PAUSE.config.digest)))).image == image


async def test_errors(registry: Registry, cri) -> None:
    _, images = cri
    cases = [
        ("Bad/Name", grpclib.const.Status.INVALID_ARGUMENT),
        ("", grpclib.const.Status.INVALID_ARGUMENT),
        (f"{registry.host}/library/busybox:missing", grpclib.const.Status.NOT_FOUND),
        (f"{registry.host}/library/nothing:1", grpclib.const.Status.NOT_FOUND),
    ]
    for ref, code in cases:
        with pytest.raises(GRPCError) as e:
            await images.pull_image(api.PullImageRequest(image=spec(ref)))
        assert e.value.status == code, (ref, e.value)
    await images.remove_image(api.RemoveImageRequest(image=spec("never/pulled:1")))
    assert await images.image_status(api.ImageStatusRequest(image=spec("never/pulled:1"))) == \
        api.ImageStatusResponse()


@pytest.mark.parametrize("registry_front", [{"auth": "basic", "users": {"u": "pw"}},
                                            {"auth": "bearer", "users": {"u": "pw"}}], indirect=True)
async def test_pull_with_auth(registry_front: RegistryFront, cri) -> None:
    _, images = cri
    await push(registry_front.host, "private/busybox", "v1", IMAGE, auth=("u", "pw"))
    ref = f"{registry_front.host}/private/busybox:v1"
    with pytest.raises(GRPCError) as e:
        await images.pull_image(api.PullImageRequest(image=spec(ref)))
    assert e.value.status == grpclib.const.Status.FAILED_PRECONDITION
    wrong_host = api.AuthConfig(username="u", password="pw", server_address="https://elsewhere.io")
    with pytest.raises(GRPCError):
        await images.pull_image(api.PullImageRequest(image=spec(ref), auth=wrong_host))
    for auth in (api.AuthConfig(username="u", password="pw"),
                 api.AuthConfig(auth=base64.b64encode(b"u:pw").decode(),
                                server_address=f"http://{registry_front.host}")):
        pulled = await images.pull_image(api.PullImageRequest(image=spec(ref), auth=auth))
        assert pulled.image_ref == IMAGE.config.digest
        await images.remove_image(api.RemoveImageRequest(image=spec(ref)))


async def run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"{argv} failed: {out.decode()}{err.decode()}"
    return out.decode()


async def test_crictl(registry: Registry, cri) -> None:
    if crictl() is None:
        pytest.skip("crictl is not built (/work/tools/build-cri-tools.sh)")
    daemon, _ = cri
    address = daemon.address
    ref = f"{registry.host}/library/busybox:1.36"
    assert IMAGE.config.digest in await run(*crictl_argv(address, "pull", ref))
    await run(*crictl_argv(address, "pull", "registry.k8s.io/pause:3.10"))
    listed = json.loads(await run(*crictl_argv(address, "images", "-o", "json")))["images"]
    assert {i["id"] for i in listed} == {IMAGE.config.digest, PAUSE.config.digest}
    assert next(i for i in listed if i["id"] == PAUSE.config.digest)["pinned"]
    table = await run(*crictl_argv(address, "images"))
    assert f"{registry.host}/library/busybox" in table and "registry.k8s.io/pause" in table
    inspected = json.loads(await run(*crictl_argv(address, "inspecti", ref)))
    assert inspected["status"]["id"] == IMAGE.config.digest
    assert inspected["info"]["chainID"] == IMAGE.chain_ids[-1]
    fs = json.loads(await run(*crictl_argv(address, "imagefsinfo", "-o", "json")))
    assert fs["status"]["imageFilesystems"][0]["fsId"]["mountpoint"].endswith(
        "io.containerd.snapshotter.v1.overlayfs")
    await run(*crictl_argv(address, "rmi", ref))
    listed = json.loads(await run(*crictl_argv(address, "images", "-o", "json")))["images"]
    assert [i["id"] for i in listed] == [PAUSE.config.digest]
