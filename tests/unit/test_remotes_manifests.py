"""Media types, descriptors, manifest limits, children and tree walks."""

from __future__ import annotations

import hashlib
import json

import pytest

from aiocontainerd.errors import InvalidArgument, Unimplemented
from aiocontainerd.remotes import mediatypes as mt
from aiocontainerd.remotes.descriptor import Descriptor, validate_digest
from aiocontainerd.remotes.limits import Limits, children, walk
from aiocontainerd.remotes.platforms import Platform


def blob(data: bytes, media_type: str, **extra: object) -> Descriptor:
    return Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data), **extra)  # type: ignore[arg-type]


def manifest_body(layers: int = 1, media: str = mt.OCI_MANIFEST) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": media,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": "sha256:" + "c" * 64, "size": 10},
        "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": f"sha256:{i:064x}", "size": i + 1}
                   for i in range(layers)],
    }).encode()


def test_kinds() -> None:
    assert mt.is_manifest(mt.OCI_MANIFEST) and mt.is_manifest(mt.DOCKER_MANIFEST)
    assert mt.is_index(mt.OCI_INDEX) and mt.is_index(mt.DOCKER_MANIFEST_LIST)
    assert mt.is_config(mt.DOCKER_CONFIG) and not mt.is_config(mt.OCI_MANIFEST)
    for layer in (mt.OCI_LAYER, mt.OCI_LAYER_GZIP, mt.OCI_LAYER_ZSTD, mt.OCI_LAYER_NONDISTRIBUTABLE_GZIP,
                  mt.DOCKER_LAYER, mt.DOCKER_LAYER_GZIP, mt.DOCKER_LAYER_ZSTD, mt.DOCKER_LAYER_FOREIGN_GZIP,
                  mt.OCI_LAYER_GZIP + "+encrypted"):
        assert mt.is_layer(layer), layer
    assert not mt.is_layer(mt.OCI_CONFIG)
    assert mt.is_non_distributable(mt.DOCKER_LAYER_FOREIGN)
    assert mt.is_non_distributable(mt.OCI_LAYER_NONDISTRIBUTABLE)
    assert not mt.is_non_distributable(mt.OCI_LAYER_GZIP)
    assert mt.is_docker(mt.DOCKER_CONFIG) and not mt.is_docker(mt.OCI_CONFIG)
    assert mt.base("application/json; charset=utf-8") == "application/json"


@pytest.mark.parametrize(("media_type", "compression"), [
    (mt.OCI_LAYER, ""), (mt.OCI_LAYER_GZIP, "gzip"), (mt.OCI_LAYER_ZSTD, "zstd"),
    (mt.OCI_LAYER_NONDISTRIBUTABLE_ZSTD, "zstd"), (mt.DOCKER_LAYER, "unknown"),
    (mt.DOCKER_LAYER_GZIP, "gzip"), (mt.DOCKER_LAYER_ZSTD, "zstd"), (mt.DOCKER_LAYER_FOREIGN_GZIP, "gzip"),
    (mt.DOCKER_LAYER_GZIP + "+encrypted", ""),
    (mt.OCI_LAYER_GZIP + "+encrypted", "gzip"),  # containerd sorts the suffixes: gzip is last
])
def test_compression(media_type: str, compression: str) -> None:
    assert mt.compression(media_type) == compression


def test_compression_not_a_layer() -> None:
    with pytest.raises(ValueError):
        mt.compression(mt.OCI_CONFIG)


def test_resolve_accept_is_containerds() -> None:
    assert mt.RESOLVE_ACCEPT == ("application/vnd.docker.distribution.manifest.v2+json, "
                                 "application/vnd.docker.distribution.manifest.list.v2+json, "
                                 "application/vnd.oci.image.manifest.v1+json, "
                                 "application/vnd.oci.image.index.v1+json, */*")


def test_schema1_refused() -> None:
    for media_type in (mt.DOCKER_SCHEMA1_MANIFEST, mt.DOCKER_SCHEMA1_MANIFEST_UNSIGNED):
        with pytest.raises(Unimplemented, match="schema 1 manifests are not supported"):
            mt.check_not_schema1(media_type)
    with pytest.raises(Unimplemented):
        mt.check_not_schema1("application/json", b'{"schemaVersion": 1, "fsLayers": []}')
    mt.check_not_schema1(mt.OCI_MANIFEST, manifest_body())
    mt.check_not_schema1("application/octet-stream", b"\x00not json")


def test_sniff() -> None:
    assert mt.sniff(manifest_body(media=mt.DOCKER_MANIFEST)) == mt.DOCKER_MANIFEST
    assert mt.sniff(b'{"schemaVersion": 2, "manifests": []}') == mt.OCI_INDEX
    assert mt.sniff(b'{"config": {}, "layers": []}') == mt.OCI_MANIFEST
    assert mt.sniff(b'{"schemaVersion": 1, "fsLayers": []}') == mt.DOCKER_SCHEMA1_MANIFEST
    assert mt.sniff(b"[]") == "" and mt.sniff(b"\xff") == ""


def test_descriptor_json_round_trip() -> None:
    d = Descriptor(mt.OCI_MANIFEST, "sha256:" + "a" * 64, 10, urls=("https://x/y",),
                   annotations={"k": "v"}, platform=Platform("linux", "arm", "v7"), artifact_type="t")
    j = d.to_json()
    assert j == {"mediaType": mt.OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 10,
                 "urls": ["https://x/y"], "annotations": {"k": "v"},
                 "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}, "artifactType": "t"}
    assert Descriptor.from_json(j) == d
    assert Descriptor.from_json({"mediaType": "x", "digest": "sha256:" + "b" * 64, "size": 0}).urls == ()


@pytest.mark.parametrize(("data", "message"), [
    ([], "must be an object"),
    ({"mediaType": "x", "digest": "sha256:" + "a" * 64}, "size must be a non-negative integer"),
    ({"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": -1}, "non-negative"),
    ({"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": True}, "non-negative"),
    ({"mediaType": "x", "digest": "sha256:zz", "size": 1}, "invalid digest"),
    ({"mediaType": "x", "digest": "md5:" + "a" * 32, "size": 1}, "unsupported digest algorithm"),
    ({"mediaType": 1, "digest": "sha256:" + "a" * 64, "size": 1}, "must be strings"),
    ({"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": 1, "urls": "u"}, "urls"),
    ({"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": 1, "annotations": {"a": 1}}, "annotations"),
    ({"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": 1, "platform": "linux"}, "platform"),
])
def test_descriptor_invalid(data: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Descriptor.from_json(data)


def test_validate_digest() -> None:
    assert validate_digest("sha512:" + "a" * 128)
    for bad in ("", "sha256", "sha256:" + "a" * 63, "SHA256:" + "a" * 64, "sha384:" + "a" * 64):
        with pytest.raises(InvalidArgument):
            validate_digest(bad)


def test_children_of_manifest_and_index() -> None:
    body = manifest_body(layers=2)
    d = blob(body, mt.OCI_MANIFEST)
    kids = children(d, body)
    assert [k.media_type for k in kids] == [mt.OCI_CONFIG, mt.OCI_LAYER_GZIP, mt.OCI_LAYER_GZIP]
    index = json.dumps({"schemaVersion": 2, "manifests": [
        dict(d.to_json(), platform={"os": "linux", "architecture": "amd64"})]}).encode()
    (entry,) = children(blob(index, mt.OCI_INDEX), index)
    assert entry.platform == Platform("linux", "amd64") and entry.digest == d.digest
    assert children(blob(b"x", mt.OCI_LAYER_GZIP), b"x") == []


def test_children_limits() -> None:
    body = manifest_body(layers=5)
    d = blob(body, mt.OCI_MANIFEST)
    with pytest.raises(InvalidArgument, match=r"5 layers, more than the limit of 3 \(max_children\)"):
        children(d, body, Limits(max_children=3))
    with pytest.raises(InvalidArgument, match=r"larger than the limit of 100 bytes \(max_manifest_size\)"):
        children(d, body, Limits(max_manifest_size=100))
    entries = [{"mediaType": mt.OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": 1} for i in range(4)]
    index = json.dumps({"manifests": entries}).encode()
    with pytest.raises(InvalidArgument, match="lists 4 manifests, more than the limit of 2"):
        children(blob(index, mt.OCI_INDEX), index, Limits(max_children=2))
    with pytest.raises(InvalidArgument, match="must be a positive integer"):
        Limits(max_children=0)


def test_children_media_type_checks() -> None:
    body = manifest_body()
    with pytest.raises(InvalidArgument, match="expected index but found manifest"):
        children(blob(body, mt.OCI_INDEX), body)
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 1}]}).encode()
    with pytest.raises(InvalidArgument, match="expected manifest but found index"):
        children(blob(index, mt.OCI_MANIFEST), index)
    schema1 = b'{"schemaVersion": 1, "fsLayers": [{"blobSum": "x"}]}'
    with pytest.raises(Unimplemented, match="schema 1"):
        children(blob(schema1, mt.OCI_MANIFEST), schema1)
    with pytest.raises(InvalidArgument, match="invalid JSON"):
        children(blob(b"{", mt.OCI_MANIFEST), b"{")
    with pytest.raises(InvalidArgument, match="no config descriptor"):
        children(blob(b'{"layers": []}', mt.OCI_MANIFEST), b'{"layers": []}')
    bad = b'{"manifests": [{"mediaType": "x", "digest": "nope", "size": 1}]}'
    with pytest.raises(InvalidArgument, match="invalid digest"):
        children(blob(bad, mt.OCI_INDEX), bad)


def test_index_referring_to_itself() -> None:
    # a digest cannot really name itself; a descriptor whose claimed digest is its own entry's is a cycle
    d = Descriptor(mt.OCI_INDEX, "sha256:" + "e" * 64, 0)
    body = json.dumps({"manifests": [{"mediaType": mt.OCI_INDEX, "digest": d.digest, "size": 10}]}).encode()
    with pytest.raises(InvalidArgument, match="refers to itself"):
        children(d, body)


async def test_walk_detects_cycles_and_depth() -> None:
    a = Descriptor(mt.OCI_INDEX, "sha256:" + "a" * 64, 1)
    b = Descriptor(mt.OCI_INDEX, "sha256:" + "b" * 64, 1)
    leaf = Descriptor(mt.OCI_LAYER, "sha256:" + "c" * 64, 1)
    graph = {a.digest: [b, leaf], b.digest: [a], leaf.digest: []}

    async def kids(d: Descriptor) -> list[Descriptor]:
        return graph[d.digest]

    with pytest.raises(InvalidArgument, match="cycle"):
        await walk(a, kids)
    graph[b.digest] = [leaf]
    assert [d.digest for d in await walk(a, kids)] == [a.digest, b.digest, leaf.digest]
    chain = [Descriptor(mt.OCI_INDEX, f"sha256:{i:064x}", 1) for i in range(12)]

    async def deep(d: Descriptor) -> list[Descriptor]:
        i = chain.index(d)
        return [chain[i + 1]] if i + 1 < len(chain) else []

    with pytest.raises(InvalidArgument, match="max_depth"):
        await walk(chain[0], deep, Limits(max_depth=4))
    assert len(await walk(chain[0], deep, Limits(max_depth=20))) == 12
