"""Reference parsing and normalisation (docker/containerd rules)."""

from __future__ import annotations

import pytest

from aiocontainerd.errors import InvalidArgument
from aiocontainerd.remotes import reference
from aiocontainerd.remotes.reference import Reference, parse, registry_host, repository_scope

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(("text", "expected"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("user/app", "docker.io/user/app:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
    ("docker.io/user/deep/path:t", "docker.io/user/deep/path:t"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/app:v1", "localhost:5000/app:v1"),
    ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest"),
    ("[::1]:5000/app", "[::1]:5000/app:latest"),
    ("ghcr.io/org/app:v1.2.3-rc_1", "ghcr.io/org/app:v1.2.3-rc_1"),
    (f"127.0.0.1:5000/app@{D}", f"127.0.0.1:5000/app@{D}"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}"),
    (f"quay.io/a/b:tag@{D}", f"quay.io/a/b:tag@{D}"),
    ("Registry.Example.com/app", "Registry.Example.com/app:latest"),
    ("foo:5000", "docker.io/library/foo:5000"),  # no slash: a tag, not a port
    ("a__b/c-d.e--f", "docker.io/a__b/c-d.e--f:latest"),
])
def test_normalise(text: str, expected: str) -> None:
    assert str(parse(text)) == expected


def test_fields() -> None:
    r = parse(f"127.0.0.1:5000/ns/app:v1@{D}")
    assert r == Reference("127.0.0.1:5000", "ns/app", "v1", D)
    assert r.name == "127.0.0.1:5000/ns/app"
    assert r.object == f"v1@{D}"
    assert r.hostname == "127.0.0.1"
    assert parse("[::1]:5000/app").hostname == "::1"
    assert parse(f"app@{D}").object == f"@{D}"


@pytest.mark.parametrize(("text", "familiar"), [
    ("busybox", "busybox:latest"),
    ("user/app:1", "user/app:1"),
    ("docker.io/library/a/b", "library/a/b:latest"),
    ("127.0.0.1:5000/app:v", "127.0.0.1:5000/app:v"),
])
def test_familiar(text: str, familiar: str) -> None:
    assert parse(text).familiar() == familiar


@pytest.mark.parametrize(("text", "message"), [
    ("", "at least one component"),
    ("Busybox", "must be lowercase"),
    ("docker.io/User/app", "must be lowercase"),
    ("a" * 64, "64-byte hexadecimal"),
    ("https://docker.io/busybox", "no URL scheme"),
    ("busybox:", "invalid reference format"),
    ("busybox:-tag", "invalid reference format"),
    ("busybox:" + "t" * 129, "invalid reference format"),
    ("bad name", "invalid reference format"),
    ("app/", "invalid reference format"),
    ("a//b", "invalid reference format"),
    ("app@sha256:abc", "invalid reference format"),
    ("app@sha256:" + "A" * 64, "invalid digest"),
    ("app@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("host.io/" + "a" * 250, "must not be more than 255 characters"),
    ("-app", "invalid reference format"),
])
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse(text)


def test_no_default_tag() -> None:
    with pytest.raises(InvalidArgument, match="tag or digest is required"):
        parse("busybox", default_tag=False)
    assert parse("busybox:1", default_tag=False).tag == "1"


def test_with_tag_and_digest() -> None:
    r = parse("app")
    assert str(r.with_tag("v2")) == "docker.io/library/app:v2"
    assert r.with_digest(D).digest == D
    with pytest.raises(InvalidArgument):
        r.with_tag("bad tag")
    with pytest.raises(InvalidArgument):
        r.with_digest("sha256:1")


def test_registry_host_and_scope() -> None:
    assert registry_host("docker.io") == "registry-1.docker.io"
    assert registry_host("127.0.0.1:5000") == "127.0.0.1:5000"
    assert registry_host("ghcr.io") == "ghcr.io"
    with pytest.raises(InvalidArgument):
        registry_host("bad host")
    assert repository_scope(parse("busybox")) == "repository:library/busybox:pull"
    assert repository_scope(parse("h.io/a/b"), push=True) == "repository:a/b:pull,push"


def test_split_docker_domain() -> None:
    assert reference.split_docker_domain("busybox") == ("docker.io", "library/busybox")
    assert reference.split_docker_domain("localhost/x") == ("localhost", "x")
    assert reference.split_docker_domain("index.docker.io/x") == ("docker.io", "library/x")
    assert reference.split_docker_domain("example.com/x") == ("example.com", "x")
