"""CRI image service without a registry: references, config, credentials, list/status shapes.

Images are written straight into a metadata store's ``k8s.io`` namespace (content
plus image records), as a pull would leave them.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from aiocontainerd import builtins
from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.config import ConfigError, load
from aiocontainerd.content import LocalStore
from aiocontainerd.cri import reference as cref
from aiocontainerd.cri.config import DEFAULT_SANDBOX_IMAGE, CRIConfig, Runtime
from aiocontainerd.cri.images import (
    IMAGE_LABEL,
    NAMESPACE,
    PINNED_LABEL,
    CRIImageService,
    image_spec,
    parse_auth,
    user_of,
)
from aiocontainerd.cri.plugin import PLUGIN, URI, CRIPlugin
from aiocontainerd.errors import InvalidArgument, NotFound
from aiocontainerd.metadata import MetadataDB
from aiocontainerd.metadata.images import Image
from aiocontainerd.metadata.plugin import Metadata
from aiocontainerd.plugin import RUNTIME
from aiocontainerd.remotes import platforms
from aiocontainerd.types import Descriptor
from tests.support.images import Blob, busybox_image, index_blob, make_image

D = "sha256:" + "a" * 64
HOST = platforms.default()
HOST_PLATFORM = (HOST.os, HOST.architecture, HOST.variant)


# -- references ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "normalized"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
    ("index.docker.io/user/app", "docker.io/user/app:latest"),
    ("localhost:5000/x", "localhost:5000/x:latest"),
    ("localhost/x:v1", "localhost/x:v1"),
    ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c"),
    ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}"),
    (f"quay.io/a/b:v1@{D}", f"quay.io/a/b@{D}"),  # the digest wins: the tag is dropped
])
def test_normalize(text: str, normalized: str) -> None:
    assert cref.normalize(text) == normalized


@pytest.mark.parametrize("text", ["", "Busybox", D, "a" * 64, "busybox:", "a b", "http://x/y"])
def test_normalize_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        cref.normalize(text)


def test_repo_digest_and_tag() -> None:
    m = "sha256:" + "b" * 64
    assert cref.repo_digest_and_tag(cref.parse_docker_ref("busybox"), m) == (
        f"docker.io/library/busybox@{m}", "docker.io/library/busybox:latest")
    assert cref.repo_digest_and_tag(cref.parse_docker_ref(f"x.io/a:t@{D}"), m) == (f"x.io/a@{D}", "")


def test_split_and_sort_references() -> None:
    names = [f"docker.io/library/busybox@{D}", "sha256:" + "c" * 64, "docker.io/library/busybox:b",
             "docker.io/library/busybox:a", "junk name", f"x.io/y:t@{D}"]
    tags, digests = cref.split_references(names)
    assert tags == ["docker.io/library/busybox:a", "docker.io/library/busybox:b"]
    assert digests == [f"x.io/y:t@{D}", f"docker.io/library/busybox@{D}"]
    ordered = cref.sort_references(names)
    assert ordered[:2] == ["docker.io/library/busybox:a", "docker.io/library/busybox:b"]
    assert ordered[-2:] == ["junk name", "sha256:" + "c" * 64]
    assert cref.is_digest(D) and not cref.is_digest("sha256:abc") and not cref.is_digest("a" * 64)


# -- config --------------------------------------------------------------------------------------

def test_config_defaults() -> None:
    c = CRIConfig()
    assert c.sandbox_image == DEFAULT_SANDBOX_IMAGE == "registry.k8s.io/pause:3.10"
    assert c.snapshotter == "overlayfs"
    assert c.cni.plugin_dirs == ["/opt/cni/bin", "/usr/lib/cni"]
    assert c.cni.conf_dir == "/etc/cni/net.d" and c.cni.max_conf_num == 1
    assert c.stream_server_address == "127.0.0.1" and c.stream_server_port == "0"
    assert c.stream_idle_timeout_seconds == 4 * 3600
    assert c.image_pull_progress_timeout_seconds == 300
    assert c.max_container_log_line_size == 16384
    assert c.max_exec_sync_output_size == 16 << 20
    assert c.runtime().runtime_type == "io.containerd.runc.v2"
    assert c.runtime("runc").sandbox_mode == "podsandbox"
    assert not c.enable_selinux and not c.restrict_oom_score_adj and not c.netns_mounts_under_state_dir
    with pytest.raises(NotFound):
        c.runtime("kata")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_from_toml(tmp_path: Path) -> None:
    f = write(tmp_path / "c.toml", """
version = 3
[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "pause:3.9"
stream_idle_timeout = "30m"
enable_unprivileged_ports = true
[plugins."io.containerd.grpc.v1.cri".cni]
bin_dir = "/opt/x"
max_conf_num = 0
[plugins."io.containerd.grpc.v1.cri".containerd]
snapshotter = "native"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
runtime_type = "io.containerd.runc.v2"
snapshotter = "overlayfs"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
BinaryName = "crun"
SystemdCgroup = false
[plugins."io.containerd.grpc.v1.cri".registry]
config_path = "/etc/aiocontainerd/certs.d"
[plugins."io.containerd.grpc.v1.cri".registry.configs."r.example.com".auth]
username = "u"
password = "p"
""")
    c = load(f, builtins.config_types()).plugins[URI]
    assert isinstance(c, CRIConfig)
    assert c.sandbox_image_ref == "docker.io/library/pause:3.9"
    assert c.stream_idle_timeout_seconds == 1800 and c.enable_unprivileged_ports
    assert c.cni.plugin_dirs == ["/opt/x"] and c.cni.max_conf_num == 0
    assert c.snapshotter == "native"
    # the default handler is kept beside the configured ones, as containerd merges its defaults
    assert set(c.containerd.runtimes) == {"runc", "crun"}
    assert c.runtime("crun").options == {"BinaryName": "crun", "SystemdCgroup": False}
    assert c.snapshotter_for("crun") == "overlayfs" and c.snapshotter_for("") == "native"
    assert c.registry.config_path == "/etc/aiocontainerd/certs.d"
    assert c.registry.configs["r.example.com"].auth.username == "u"


@pytest.mark.parametrize(("body", "message"), [
    ('sandbox_image = "Bad/Name"', "sandbox_image"),
    ('stream_server_port = "http"', "stream_server_port"),
    ('stream_server_port = "70000"', "stream_server_port"),
    ('stream_idle_timeout = "4 hours"', "stream_idle_timeout"),
    ('image_pull_progress_timeout = "-1m"', "image_pull_progress_timeout"),
    ("max_concurrent_downloads = 0", "max_concurrent_downloads"),
    ("unknown_key = 1", "unknown_key"),
    ("enable_selinux = 1", "enable_selinux"),
    ('[cni]\nmax_conf_num = -1', "max_conf_num"),
    ('[cni]\nip_pref = "ipv5"', "ip_pref"),
    ('[cni]\nbin_dirs = "/opt/cni/bin"', "bin_dirs"),
    ('[containerd]\ndefault_runtime_name = "kata"', "default_runtime_name"),
    ('[containerd]\nsnapshotter = ""', "snapshotter"),
    ('[containerd.runtimes.x]\nsandbox_mode = "vm"', "sandbox_mode"),
    ('[containerd.runtimes.x]\nruntime_type = ""', "runtime_type"),
    ('[registry]\nconfig_path = "/a:/b"', "config_path"),
    ('[registry]\nmirrors = {}', "mirrors"),
])
def test_config_rejects(tmp_path: Path, body: str, message: str) -> None:
    head, _, rest = body.partition("\n") if body.startswith("[") else ("", "", body)
    section = f'[plugins."io.containerd.grpc.v1.cri"{"." + head[1:-1] if head else ""}]'
    f = write(tmp_path / "c.toml", f"version = 3\n{section}\n{rest}\n")
    with pytest.raises(ConfigError, match=message):
        load(f, builtins.config_types())


def test_runtime_defaults() -> None:
    r = Runtime()
    assert (r.runtime_type, r.runtime_path, r.options, r.sandbox_mode) == (
        "io.containerd.runc.v2", "", {}, "podsandbox")


def test_registration() -> None:
    assert PLUGIN.uri == "io.containerd.grpc.v1.cri" == URI
    assert RUNTIME in PLUGIN.requires and PLUGIN.config is CRIConfig
    assert PLUGIN in builtins.registrations()


# -- credentials -----------------------------------------------------------------------------------

def test_parse_auth() -> None:
    assert parse_auth(None, "h") is None
    assert parse_auth(api.AuthConfig(username="u", password="p"), "h") == ("u", "p")
    assert parse_auth(api.AuthConfig(identity_token="t"), "h") == ("", "t")
    b64 = base64.b64encode(b"u:p:q\0").decode()
    assert parse_auth(api.AuthConfig(auth=b64), "h") == ("u", "p:q")
    assert parse_auth(api.AuthConfig(auth=b64, server_address="https://h:5000/v1/"), "h:5000") == ("u", "p:q")
    assert parse_auth(api.AuthConfig(username="u", server_address="other.io"), "h") is None
    assert parse_auth(api.AuthConfig(username="u", server_address="https://index.docker.io/v1/"),
                      "registry-1.docker.io") == ("u", "")
    assert parse_auth(api.AuthConfig(registry_token="r"), "h") is None
    with pytest.raises(InvalidArgument):
        parse_auth(api.AuthConfig(auth=base64.b64encode(b"nocolon").decode()), "h")
    with pytest.raises(InvalidArgument):
        parse_auth(api.AuthConfig(auth="%%%"), "h")


# -- image shapes ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("user", "expected"), [
    ("", (None, "")), ("1002", (1002, "")), ("1003:1004", (1003, "")), ("www-data", (None, "www-data")),
    ("www-data:1004", (None, "www-data")), ("0", (0, "")),
])
def test_user_of(user: str, expected: tuple) -> None:
    assert user_of({"config": {"User": user}}) == expected


def test_image_spec_shape() -> None:
    spec = image_spec({"architecture": "amd64", "os": "linux", "unknown": 1,
                       "config": {"Env": ["A=1"], "Cmd": None, "Foo": 1},
                       "rootfs": {"type": "layers", "diff_ids": [D]}, "history": []})
    assert spec == {"architecture": "amd64", "os": "linux", "config": {"Env": ["A=1"]},
                    "rootfs": {"type": "layers", "diff_ids": [D]}}
    assert list(image_spec({})) == ["architecture", "os", "config", "rootfs"]


@pytest.fixture
async def metadata(tmp_path: Path):
    db = MetadataDB.open(tmp_path / "db", map_size=64 << 20)
    yield Metadata(db, LocalStore(tmp_path / "content"))
    db.close()


async def store_blobs(m: Metadata, blobs: list[Blob]) -> None:
    for b in blobs:
        w = await m.content.writer(NAMESPACE, f"t-{b.digest}", b.size, b.digest)
        await w.write(b.data)
        await w.commit(b.size, b.digest)
        w.close()


def target(blob: Blob) -> Descriptor:
    return Descriptor(blob.media_type, blob.digest, blob.size)


def service(m: Metadata, tmp_path: Path, **config) -> CRIImageService:
    return CRIImageService(CRIConfig(**config), metadata=m, transfer=None, events=None, root=tmp_path)


async def test_list_status_remove_shapes(metadata: Metadata, tmp_path: Path) -> None:
    img = busybox_image(2, platform=HOST_PLATFORM)
    user = make_image(img.layers, img.diff_ids, platform=HOST_PLATFORM,
                      container_config={"User": "www-data:1004"})
    other = make_image(img.layers, img.diff_ids, platform=("linux", "s390x", ""))
    idx = index_blob([user, other])
    await store_blobs(metadata, [*img.blobs.values(), user.manifest, user.config, idx])
    names = {
        "docker.io/library/busybox:1.36": target(img.manifest),
        f"docker.io/library/busybox@{img.manifest.digest}": target(img.manifest),
        img.config.digest: target(img.manifest),
        "registry.k8s.io/pause:3.10": target(idx),  # the sandbox image: pinned by name
        "example.com/user:v1": target(idx),
        "example.com/gone:v1": Descriptor(img.manifest.media_type, "sha256:" + "e" * 64, 10),
    }
    for name, t in names.items():
        labels = {PINNED_LABEL: "pinned"} if name == "example.com/user:v1" else {}
        await metadata.images.create(NAMESPACE, Image(name, t, labels))
    await metadata.images.create("default", Image("docker.io/library/other:1", target(img.manifest)))
    svc = service(metadata, tmp_path)

    listed = (await svc.list_images(api.ListImagesRequest())).images
    assert [i.id for i in listed] == sorted([img.config.digest, user.config.digest])
    bb = next(i for i in listed if i.id == img.config.digest)
    assert bb.repo_tags == ["docker.io/library/busybox:1.36"]
    assert bb.repo_digests == [f"docker.io/library/busybox@{img.manifest.digest}"]
    assert bb.size == img.manifest.size + img.config.size + sum(x.size for x in img.layers)
    assert not bb.pinned and bb.uid is None and bb.username == ""
    u = next(i for i in listed if i.id == user.config.digest)
    assert u.repo_tags == ["example.com/user:v1", "registry.k8s.io/pause:3.10"] and u.repo_digests == []
    assert u.pinned and u.username == "www-data" and u.uid is None
    assert u.size == idx.size + user.manifest.size + user.config.size + sum(x.size for x in user.layers)

    for ref in ("busybox:1.36", "docker.io/library/busybox:1.36", img.config.digest,
                img.config.digest[7:19], img.config.digest[:20], f"busybox@{img.manifest.digest}"):
        got = await svc.image_status(api.ImageStatusRequest(image=api.ImageSpec(image=ref)))
        assert got.image == bb and got.info == {}, ref
    verbose = await svc.image_status(api.ImageStatusRequest(image=api.ImageSpec(image="busybox:1.36"),
                                                            verbose=True))
    info = json.loads(verbose.info["info"])
    assert list(info) == ["chainID", "imageSpec"]
    assert info["chainID"] == img.chain_ids[-1]
    assert info["imageSpec"]["rootfs"]["diff_ids"] == list(img.diff_ids)
    assert info["imageSpec"]["config"]["Cmd"] == ["/bin/sh"]
    for missing in ("busybox:latest", "sha256:" + "f" * 64, "nothing", ""):
        assert await svc.image_status(api.ImageStatusRequest(image=api.ImageSpec(image=missing))) == \
            api.ImageStatusResponse()
    assert await svc.image_status(api.ImageStatusRequest()) == api.ImageStatusResponse()

    filtered = await svc.list_images(api.ListImagesRequest(filter=api.ImageFilter(
        image=api.ImageSpec(image="registry.k8s.io/pause:3.10"))))
    assert [i.id for i in filtered.images] == [user.config.digest]
    none = await svc.list_images(api.ListImagesRequest(filter=api.ImageFilter(
        image=api.ImageSpec(image="nope:1"))))
    assert none.images == []

    await svc.remove_image(api.RemoveImageRequest(image=api.ImageSpec(image="busybox:1.36")))
    await svc.remove_image(api.RemoveImageRequest(image=api.ImageSpec(image="busybox:1.36")))
    await svc.remove_image(api.RemoveImageRequest(image=api.ImageSpec(image=img.config.digest)))
    left = {i.name for i in metadata.images.list(NAMESPACE)}
    assert left == {"registry.k8s.io/pause:3.10", "example.com/user:v1", "example.com/gone:v1"}
    assert [i.id for i in (await svc.list_images(api.ListImagesRequest())).images] == [user.config.digest]
    assert {i.name for i in metadata.images.list("default")} == {"docker.io/library/other:1"}


async def test_ambiguous_prefix(metadata: Metadata, tmp_path: Path) -> None:
    svc = service(metadata, tmp_path)
    base = busybox_image(platform=HOST_PLATFORM)
    by_digit: dict[str, object] = {}
    for n in range(17):  # 17 configs: two share the first hex digit of their ID
        img = make_image(base.layers, base.diff_ids, platform=HOST_PLATFORM,
                         container_config={"Env": [f"N={n}"]})
        if img.config.digest[7] in by_digit:
            a, b = img, by_digit[img.config.digest[7]]
            break
        by_digit[img.config.digest[7]] = img
    await store_blobs(metadata, list(base.layers))
    for i, img in enumerate((a, b)):
        await store_blobs(metadata, [img.manifest, img.config])
        await metadata.images.create(NAMESPACE, Image(f"x.io/a:{i}", target(img.manifest)))
    with pytest.raises(InvalidArgument, match="ambiguous"):
        await svc.resolve(a.config.digest[7])
    assert (await svc.resolve(a.config.digest[7:30])).id == a.config.digest


async def test_fs_usage_without_snapshots(metadata: Metadata, tmp_path: Path) -> None:
    svc = service(metadata, tmp_path)
    got = (await svc.image_fs_info(api.ImageFsInfoRequest())).image_filesystems
    assert [u.fs_id.mountpoint for u in got] == [
        str(tmp_path / "io.containerd.snapshotter.v1.overlayfs"),
        str(tmp_path / "io.containerd.content.v1.content")]
    assert all(u.used_bytes.value == 0 and u.inodes_used.value == 0 and u.timestamp > 0 for u in got)
    img = busybox_image(platform=HOST_PLATFORM)
    await store_blobs(metadata, list(img.blobs.values()))
    content = (await svc.image_fs_info(api.ImageFsInfoRequest())).image_filesystems[-1]
    assert content.used_bytes.value == sum(b.size for b in img.blobs.values())
    assert content.inodes_used.value == len(img.blobs)


async def test_plugin_serves_both_services(metadata: Metadata, tmp_path: Path) -> None:
    plugin = CRIPlugin(CRIConfig(), metadata=metadata, transfer=None, events=None, root=tmp_path / "r",
                       state=tmp_path / "s", daemon_root=tmp_path)
    paths = set(plugin.__mapping__())
    assert "/runtime.v1.ImageService/PullImage" in paths
    assert not any(p.startswith("/runtime.v1.RuntimeService/") for p in paths)
    plugin.runtime_service = api.RuntimeServiceBase()
    paths = set(plugin.__mapping__())
    assert {"/runtime.v1.RuntimeService/Version", "/runtime.v1.ImageService/ImageFsInfo"} <= paths
    closed = []

    async def closer() -> None:
        closed.append(1)

    plugin.on_close(closer)
    await plugin.close()
    assert closed == [1]
    assert IMAGE_LABEL == "io.cri-containerd.image"


class _Transfer:
    """What the CRI needs of the core image service for a pull: a diff service, event publication."""

    diff = object()

    def stored(self, namespace: str, image: Image) -> Image:
        return image


async def test_pull_without_progress_is_cancelled(metadata: Metadata, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from aiocontainerd.errors import Canceled
    from aiocontainerd.images import pull as core_pull

    cancelled = []

    async def stalled(ref, *, progress, **kwargs):
        progress(core_pull.Progress("layer-x", D, "application/octet-stream", 0, 10, "waiting"))
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(ref)
            raise

    monkeypatch.setattr(core_pull, "pull", stalled)
    metadata.snapshotters["overlayfs"] = None  # type: ignore[assignment]  # only looked up by name
    svc = CRIImageService(CRIConfig(image_pull_progress_timeout="200ms"), metadata=metadata,
                          transfer=_Transfer(), events=None, root=tmp_path)  # type: ignore[arg-type]
    started = asyncio.get_running_loop().time()
    with pytest.raises(Canceled, match="no progress for 200ms"):
        await svc.pull("127.0.0.1:1/a:b")
    assert asyncio.get_running_loop().time() - started < 5
    assert cancelled == ["127.0.0.1:1/a:b"]
