"""Transfer and Streaming services: pull, push, import, export done by the daemon.

Driven through ``aiocontainerd.Client`` (as containerd 2.x's client drives them),
against an in-process daemon and a real registry on loopback; the wire details
(type URLs, stream registration, flow control) are checked with raw gRPC calls.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
from pathlib import Path

import grpclib.const
import pytest
from grpclib.exceptions import GRPCError

from aiocontainerd import Client, Daemon
from aiocontainerd.api.containerd.services.streaming import v1 as streaming_api
from aiocontainerd.api.containerd.services.transfer import v1 as transfer_api
from aiocontainerd.api.containerd.types import transfer as tt
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.client.images import ClientStream, Progress
from aiocontainerd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from aiocontainerd.images.pull import ref_key
from aiocontainerd.plugin import METADATA
from aiocontainerd.remotes.descriptor import Descriptor as RemoteDescriptor
from aiocontainerd.services.streaming import MAX_READ, STREAM_METHOD, pack, type_url
from tests.support.images import busybox_image, docker_save_tar, multi_platform, oci_layout_tar, push
from tests.support.registry import Registry, RegistryFront

pytestmark = pytest.mark.integration


def metadata(daemon: Daemon):
    return daemon.plugins.instance(METADATA)


def streams(daemon: Daemon):
    return daemon.plugins.instance("io.containerd.streaming.v1", "manager")


def key(blob) -> str:
    return ref_key(RemoteDescriptor(blob.media_type, blob.digest, blob.size))


def state_files(daemon: Daemon) -> list[str]:
    folder = Path(daemon.config.state) / "io.containerd.grpc.v1.transfer"
    return sorted(os.listdir(folder)) if folder.exists() else []


async def settled(daemon: Daemon) -> None:
    """Wait until the daemon has dropped every named stream (their calls end asynchronously)."""
    for _ in range(100):
        if len(streams(daemon)) == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{len(streams(daemon))} streams left registered")


# -- pull ------------------------------------------------------------------------------------------

async def test_pull_single_image_with_progress(daemon: Daemon, client: Client, registry: Registry) -> None:
    image = busybox_image(layers=2)
    await push(registry.host, "test/bb", "v1", image)
    events: list[Progress] = []
    got = await client.images.pull(f"{registry.host}/test/bb:v1", plain_http=True,
                                   progress=events.append)
    assert got.name == f"{registry.host}/test/bb:v1"
    assert got.target.digest == image.digest
    assert got.target.media_type == image.manifest.media_type
    m = metadata(daemon)
    assert all(m.content.has("default", d) for d in image.blobs)
    assert [i.name for i in await client.images.list()] == [got.name]

    # containerd's progress: status lines, the image as the root, blobs under their manifest
    status = [e.event for e in events if not e.name]
    assert status[0] == f"Resolving from OCI Registry ({registry.host}/test/bb:v1)"
    assert status[1] == f"Pulling from OCI Registry ({registry.host}/test/bb:v1)"
    assert status[-1] == f"Completed pull from OCI Registry ({registry.host}/test/bb:v1)"
    by_name: dict[str, list[Progress]] = {}
    for e in events:
        if e.name:
            by_name.setdefault(e.name, []).append(e)
    assert by_name[got.name][0].event == "fetching image content"
    assert by_name[got.name][-1].event == "saved"
    assert by_name[got.name][-1].desc.digest == image.digest
    manifest = key(image.manifest)
    assert by_name[manifest][0].parents == (got.name,)
    for blob in (image.config, *image.layers):
        seen = by_name[key(blob)]
        assert seen[0].event == "waiting" and seen[0].total == blob.size
        assert seen[-1].event == "complete" and seen[-1].progress == blob.size
        assert all(e.parents == (manifest,) for e in seen)
        assert seen[-1].desc.digest == blob.digest
        counts = [e.progress for e in seen if e.event == "downloading"]
        assert counts == sorted(counts) and all(c <= blob.size for c in counts)
    await settled(daemon)

    # pulled again: every blob already exists
    again: list[Progress] = []
    await client.images.pull(f"{registry.host}/test/bb:v1", plain_http=True, progress=again.append)
    assert {e.name for e in again if e.event == "already exists"} == {key(b) for b in
                                                                       (image.config, *image.layers)}


async def test_pull_platforms(daemon: Daemon, client: Client, registry: Registry) -> None:
    image = multi_platform()
    await push(registry.host, "test/multi", "1", image)
    ref = f"{registry.host}/test/multi:1"
    m = metadata(daemon)

    arm64 = client.with_namespace("arm64")
    got = await arm64.images.pull(ref, plain_http=True, platforms=["linux/arm64"])
    assert got.target.digest == image.digest
    have = {i.digest for i in m.content.list("arm64")}
    assert set(image.for_platform("linux", "arm64").blobs) <= have
    assert image.for_platform("linux", "amd64").layers[0].digest not in have
    assert await arm64.images.platforms(got) == ["linux/amd64", "linux/arm/v7", "linux/arm64"]

    everything = client.with_namespace("all")
    await everything.images.pull(ref, plain_http=True, all_platforms=True)
    assert set(image.blobs) <= {i.digest for i in m.content.list("all")}

    with pytest.raises(InvalidArgument):
        await client.images.pull(ref, plain_http=True, platforms=["linux/arm64"], all_platforms=True)


@pytest.mark.parametrize("registry_front", [{"auth": "bearer", "users": {"alice": "s3cret"}}],
                         indirect=True)
async def test_pull_with_credentials_over_the_auth_stream(daemon: Daemon, client: Client,
                                                          registry_front: RegistryFront) -> None:
    image = busybox_image()
    await push(registry_front.host, "private/bb", "1", image, auth=("alice", "s3cret"))
    ref = f"{registry_front.host}/private/bb:1"
    with pytest.raises(FailedPrecondition):
        await client.images.pull(ref, plain_http=True)
    with pytest.raises(FailedPrecondition):
        await client.images.pull(ref, plain_http=True, credentials=("alice", "wrong"))

    asked: list[str] = []

    async def lookup(host: str) -> tuple[str, str] | None:
        asked.append(host)
        return ("alice", "s3cret") if host == registry_front.host else None

    got = await client.images.pull(ref, plain_http=True, credentials=lookup)
    assert got.target.digest == image.digest
    assert asked == [registry_front.host]
    token_requests = [r for r in registry_front.requests if r.path.startswith("/token")]
    assert any(r.authorization and r.authorization.startswith("Basic ") for r in token_requests)
    # a mapping and a plain pair work the same way
    await client.with_namespace("m").images.pull(ref, plain_http=True,
                                                 credentials={registry_front.host: ("alice", "s3cret")})
    await client.with_namespace("p").images.pull(ref, plain_http=True, credentials=("alice", "s3cret"))
    await settled(daemon)


async def test_pull_errors_leave_nothing(daemon: Daemon, client: Client, registry: Registry) -> None:
    with pytest.raises(NotFound):
        await client.images.pull(f"{registry.host}/test/none:1", plain_http=True)
    with pytest.raises(InvalidArgument):
        await client.images.pull("Not A Reference", plain_http=True)
    image = busybox_image()
    await push(registry.host, "test/e500", "1", image)
    async with RegistryFront(registry) as front:
        front.fail(r"/v2/test/e500/blobs/", 500, times=100)
        with pytest.raises(Unavailable):
            await client.images.pull(f"{front.host}/test/e500:1", plain_http=True)
    assert await client.images.list() == []
    await settled(daemon)
    assert state_files(daemon) == []


# -- push --------------------------------------------------------------------------------------------

async def test_push_to_another_repository_and_pull_back(daemon: Daemon, client: Client,
                                                         registry: Registry) -> None:
    image = multi_platform()
    await push(registry.host, "test/src", "1", image)
    src = f"{registry.host}/test/src:1"
    await client.images.pull(src, plain_http=True, all_platforms=True)
    events: list[Progress] = []
    dst = f"{registry.host}/test/dst:2"
    await client.images.push(src, dst, plain_http=True, progress=events.append)
    status = [e.event for e in events if not e.name]
    assert status == [f"Pushing to OCI Registry ({dst})", f"Completed push to OCI Registry ({dst})"]
    finished = {e.name for e in events if e.event in ("complete", "already exists")}
    assert finished == {key(b) for b in image.blobs.values()}
    index = [e for e in events if e.name == key(image.index)]
    assert index[-1].parents == (src,)
    layer = [e for e in events if e.name == key(image.for_platform("linux", "arm64").layers[0])]
    assert layer[-1].parents == (key(image.for_platform("linux", "arm64").manifest),)

    back = client.with_namespace("back")
    got = await back.images.pull(dst, plain_http=True, all_platforms=True)
    assert got.target.digest == image.digest
    assert set(image.blobs) <= {i.digest for i in metadata(daemon).content.list("back")}

    with pytest.raises(NotFound):
        await client.images.push("example.com/nothing:1", dst, plain_http=True)


# -- import and export ---------------------------------------------------------------------------

async def test_import_export_round_trip(daemon: Daemon, client: Client, tmp_path: Path) -> None:
    image = multi_platform(layers=2)
    archive = tmp_path / "in.tar"
    archive.write_bytes(oci_layout_tar(image, "1", image_name="example.com/multi:1"))
    events: list[Progress] = []
    saved = await client.images.import_archive(archive, progress=events.append)
    assert [(i.name, i.target.digest) for i in saved] == [("example.com/multi:1", image.digest)]
    assert [e.event for e in events if not e.name] == ["Importing", "Completed import"]
    assert set(image.blobs) <= {i.digest for i in metadata(daemon).content.list("default")}

    out = tmp_path / "out.tar"
    await client.images.export_archive(out, ["example.com/multi:1"], all_platforms=True)
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
        index = json.load(tf.extractfile("index.json"))
    assert {f"blobs/sha256/{d.split(':')[1]}" for d in image.blobs} <= names
    assert index["manifests"][0]["digest"] == image.digest
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == "example.com/multi:1"

    # into a file object, then imported by another namespace from a file object
    buffer = io.BytesIO()
    await client.images.export_archive(buffer, ["example.com/multi:1"], all_platforms=True)
    assert buffer.getvalue() == out.read_bytes()
    other = client.with_namespace("other")
    buffer.seek(0)
    again = await other.images.import_archive(buffer)
    assert [(i.name, i.target.digest) for i in again] == [("example.com/multi:1", image.digest)]

    # one platform only: the index is kept, the other platforms' blobs are not exported
    arm = tmp_path / "arm.tar"
    await client.images.export_archive(arm, ["example.com/multi:1"], platforms=["linux/arm64"])
    with tarfile.open(arm) as tf:
        names = set(tf.getnames())
    assert f"blobs/sha256/{image.for_platform('linux', 'arm64').layers[0].digest.split(':')[1]}" in names
    assert f"blobs/sha256/{image.for_platform('linux', 'amd64').layers[0].digest.split(':')[1]}" \
        not in names
    await settled(daemon)
    assert state_files(daemon) == []


async def test_import_names(daemon: Daemon, client: Client, tmp_path: Path) -> None:
    image = busybox_image(media="docker")
    saved = await client.images.import_archive(io.BytesIO(docker_save_tar(image, "example.com/saved:v1")))
    assert [(i.name, i.target.media_type) for i in saved] == [
        ("example.com/saved:v1", "application/vnd.docker.distribution.manifest.v2+json")]
    tagged = busybox_image(layers=3)
    saved = await client.images.import_archive(io.BytesIO(oci_layout_tar(tagged, "v3")),
                                               base_name="example.com/base")
    assert [(i.name, i.target.digest) for i in saved] == [("example.com/base:v3", tagged.digest)]


async def test_bad_archives_are_refused_and_leave_nothing(daemon: Daemon, client: Client) -> None:
    with pytest.raises(InvalidArgument):
        await client.images.import_archive(io.BytesIO(b"this is not a tar archive" * 1000))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        data = (b'{"schemaVersion":2,"manifests":[{"mediaType":'
                b'"application/vnd.oci.image.manifest.v1+json","digest":"sha256:' + b"0" * 64 +
                b'","size":3,"annotations":{"io.containerd.image.name":"example.com/bad:1"}}]}')
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(InvalidArgument):
        await client.images.import_archive(io.BytesIO(out.getvalue()))
    image = busybox_image()
    truncated = oci_layout_tar(image, "1", image_name="example.com/cut:1")[:20000]
    with pytest.raises(InvalidArgument):
        await client.images.import_archive(io.BytesIO(truncated))
    assert await client.images.list() == []
    await metadata(daemon).collect()
    assert metadata(daemon).content.list("default") == []
    await settled(daemon)
    assert state_files(daemon) == []

    with pytest.raises(NotFound):
        await client.images.export_archive(io.BytesIO(), ["example.com/none:1"])
    await settled(daemon)


# -- records -----------------------------------------------------------------------------------------

async def test_list_get_tag_delete(daemon: Daemon, client: Client) -> None:
    image = busybox_image()
    await client.images.import_archive(io.BytesIO(oci_layout_tar(image, "1", image_name="example.com/a:1")))
    tagged = await client.images.tag("example.com/a:1", "example.com/b:1")
    assert tagged.target.digest == image.digest
    with pytest.raises(AlreadyExists):
        await client.images.tag("example.com/a:1", "example.com/b:1")
    await client.images.tag("example.com/a:1", "example.com/b:1", force=True)
    assert [i.name for i in await client.images.list()] == ["example.com/a:1", "example.com/b:1"]
    assert [i.name for i in await client.images.list(["name==example.com/b:1"])] == ["example.com/b:1"]
    assert (await client.images.get("example.com/b:1")).target.digest == image.digest
    assert await client.images.size(tagged) == image.manifest.size + image.config.size + sum(
        layer.size for layer in image.layers)
    assert await client.images.platforms(tagged) == ["linux/amd64"]
    await client.images.delete("example.com/a:1")
    await client.images.delete("example.com/b:1", sync=True)
    with pytest.raises(NotFound):
        await client.images.get("example.com/b:1")
    assert metadata(daemon).content.list("default") == []


# -- the wire ----------------------------------------------------------------------------------------

async def test_type_urls_are_go_typeurl_names(daemon: Daemon, client: Client) -> None:
    """Any type URLs are protobuf full names without a prefix, as Go's typeurl writes them."""
    assert type_url(tt.OciRegistry) == "containerd.types.transfer.OCIRegistry"
    assert type_url(tt.ImageStore) == "containerd.types.transfer.ImageStore"
    assert type_url(tt.ImageImportStream) == "containerd.types.transfer.ImageImportStream"
    assert type_url(tt.ImageExportStream) == "containerd.types.transfer.ImageExportStream"
    assert type_url(tt.Progress) == "containerd.types.transfer.Progress"
    assert type_url(tt.Data) == "containerd.types.transfer.Data"
    assert type_url(tt.WindowUpdate) == "containerd.types.transfer.WindowUpdate"
    assert type_url(tt.AuthRequest) == "containerd.types.transfer.AuthRequest"
    assert type_url(tt.AuthResponse) == "containerd.types.transfer.AuthResponse"
    assert type_url(streaming_api.StreamInit) == "containerd.services.streaming.v1.StreamInit"

    channel = client._channel
    async with channel.request(STREAM_METHOD, grpclib.const.Cardinality.STREAM_STREAM, pb.Any, pb.Any,
                               metadata={"containerd-namespace": "default"}) as raw:
        await raw.send_message(pb.Any(type_url="containerd.services.streaming.v1.StreamInit",
                                      value=bytes(streaming_api.StreamInit(id="raw-1"))))
        ack = await raw.recv_message()
        assert ack.type_url == "google.protobuf.Empty" and ack.value == b""
        assert streams(daemon).get("default", "raw-1") is not None
        # the same id again in the namespace: AlreadyExists; in another namespace: fine
        with pytest.raises(AlreadyExists):
            await ClientStream.create(channel, {"containerd-namespace": "default"}, "raw-1")
        other = await ClientStream.create(channel, {"containerd-namespace": "other"}, "raw-1")
        await other.finish()
        # an import reads the stream it names; the daemon grants 64 KiB at a time
        transfer = transfer_api.TransferStub(channel, metadata={"containerd-namespace": "default"})
        call = asyncio.ensure_future(transfer.transfer(transfer_api.TransferRequest(
            source=pack(tt.ImageImportStream(stream="raw-1")),
            destination=pack(tt.ImageStore(extra_references=[tt.ImageReference(
                name="example.com/raw", is_prefix=True)])))))
        update = await raw.recv_message()
        assert update.type_url == "containerd.types.transfer.WindowUpdate"
        assert tt.WindowUpdate.parse(update.value).update == 2 * MAX_READ
        archive = oci_layout_tar(busybox_image(), "1")
        credit = 2 * MAX_READ
        sent = 0
        while sent < len(archive):
            while credit <= 0:
                more = await raw.recv_message()
                credit += tt.WindowUpdate.parse(more.value).update
            n = min(MAX_READ, credit, len(archive) - sent)
            await raw.send_message(pb.Any(type_url="containerd.types.transfer.Data",
                                          value=bytes(tt.Data(data=archive[sent:sent + n]))))
            sent += n
            credit -= n
        await raw.end()
        await call
        assert (await client.images.get("example.com/raw:1")).target.digest == busybox_image().digest
    await settled(daemon)


async def test_export_respects_the_window(daemon: Daemon, client: Client) -> None:
    """The daemon never sends more Data than the receiver granted, 32 KiB per message at most."""
    image = busybox_image(layers=3)
    await client.images.import_archive(io.BytesIO(oci_layout_tar(image, "1", image_name="example.com/w:1")))
    channel = client._channel
    async with channel.request(STREAM_METHOD, grpclib.const.Cardinality.STREAM_STREAM, pb.Any, pb.Any,
                               metadata={"containerd-namespace": "default"}) as raw:
        await raw.send_message(pack(streaming_api.StreamInit(id="export-w")))
        await raw.recv_message()
        transfer = transfer_api.TransferStub(channel, metadata={"containerd-namespace": "default"})
        call = asyncio.ensure_future(transfer.transfer(transfer_api.TransferRequest(
            source=pack(tt.ImageStore(name="example.com/w:1")),
            destination=pack(tt.ImageExportStream(stream="export-w", all_platforms=True)))))
        await raw.send_message(pack(tt.WindowUpdate(update=100_000)))
        received = bytearray()
        while len(received) < 100_000:
            message = await raw.recv_message()
            assert message.type_url == "containerd.types.transfer.Data"
            data = tt.Data.parse(message.value).data
            assert 0 < len(data) <= MAX_READ
            received += data
        assert len(received) == 100_000
        pending = asyncio.ensure_future(raw.recv_message())
        done, _ = await asyncio.wait({pending}, timeout=0.3)
        assert not done and not call.done()  # no credit, no data
        await raw.send_message(pack(tt.WindowUpdate(update=1 << 30)))
        message = await pending
        while message is not None:
            received += tt.Data.parse(message.value).data
            message = await raw.recv_message()
        await raw.end()
        await call
    with tarfile.open(fileobj=io.BytesIO(bytes(received))) as tf:
        assert json.load(tf.extractfile("index.json"))["manifests"][0]["digest"] == image.digest


async def test_unsupported_requests(daemon: Daemon, client: Client) -> None:
    transfer = transfer_api.TransferStub(client._channel)

    async def code(request: transfer_api.TransferRequest) -> grpclib.const.Status:
        with pytest.raises(GRPCError) as e:
            await transfer.transfer(request)
        return e.value.status

    registry = pack(tt.OciRegistry(reference="127.0.0.1:1/a:1"))
    assert await code(transfer_api.TransferRequest(source=registry, destination=registry)) == \
        grpclib.const.Status.UNIMPLEMENTED
    odd = pb.Any(type_url="containerd.types.transfer.ContainerPath", value=b"")
    assert await code(transfer_api.TransferRequest(source=odd, destination=registry)) == \
        grpclib.const.Status.UNIMPLEMENTED
    assert await code(transfer_api.TransferRequest(destination=registry)) == \
        grpclib.const.Status.INVALID_ARGUMENT
    # a stream that was never opened
    assert await code(transfer_api.TransferRequest(
        source=pack(tt.ImageImportStream(stream="nope")), destination=pack(tt.ImageStore()))) == \
        grpclib.const.Status.NOT_FOUND
    assert await code(transfer_api.TransferRequest(
        source=registry, destination=pack(tt.ImageStore(name="x")),
        options=transfer_api.TransferOptions(progress_stream="nope"))) == grpclib.const.Status.NOT_FOUND
    # resolver options this daemon cannot honour are refused, not ignored
    headers = tt.RegistryResolver(headers={"x-custom": "1"})
    assert await code(transfer_api.TransferRequest(
        source=pack(tt.OciRegistry(reference="127.0.0.1:1/a:1", resolver=headers)),
        destination=pack(tt.ImageStore(name="x")))) == grpclib.const.Status.UNIMPLEMENTED


async def test_client_going_away_mid_import(daemon: Daemon, client: Client) -> None:
    """The import fails Unavailable, and the stream and the spooled file are gone."""
    channel = client._channel
    data = await ClientStream.create(channel, {"containerd-namespace": "default"}, "import-gone")
    transfer = transfer_api.TransferStub(channel, metadata={"containerd-namespace": "default"})
    call = asyncio.ensure_future(transfer.transfer(transfer_api.TransferRequest(
        source=pack(tt.ImageImportStream(stream="import-gone")),
        destination=pack(tt.ImageStore(extra_references=[tt.ImageReference(
            name="example.com/gone", is_prefix=True)])))))
    update = await data.recv()
    assert tt.WindowUpdate.parse(update.value).update == 2 * MAX_READ
    await data.send(tt.Data(data=oci_layout_tar(busybox_image(), "1")[:MAX_READ]))
    for _ in range(100):
        if state_files(daemon):
            break
        await asyncio.sleep(0.01)
    assert len(state_files(daemon)) == 1
    await data.finish()  # cancels the call: the client is gone
    with pytest.raises(GRPCError) as failed:
        await call
    assert failed.value.status == grpclib.const.Status.UNAVAILABLE
    await settled(daemon)
    assert state_files(daemon) == []
    assert await client.images.list() == []


async def test_leftover_spools_are_removed_at_start(tmp_short: Path) -> None:
    from tests.conftest import make_config

    config = make_config(tmp_short)
    folder = Path(config.state) / "io.containerd.grpc.v1.transfer"
    folder.mkdir(parents=True)
    (folder / "import-abc.tar").write_bytes(b"half an archive")
    async with Daemon(config) as d:
        assert state_files(d) == []
        assert d.plugins.get("io.containerd.grpc.v1.transfer").ok
        assert d.plugins.get("io.containerd.grpc.v1.streaming").ok
