"""TLS to a registry: hosts.toml ``ca``, ``client`` certificates, ``skip_verify``, loopback defaults.

Certificates are made with the ``openssl`` command (skipped without it); the registry is a
small in-process aiohttp server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from aiocontainerd.errors import Unavailable
from aiocontainerd.remotes import Hosts, Resolver, mediatypes

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST, "layers": [],
                       "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": "sha256:" + "c" * 64,
                                  "size": 2}}).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=test-ca", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "san.ext"]), ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *ext, cwd=d)
    return d


async def manifest(request: web.Request) -> web.Response:
    peer = request.transport.get_extra_info("peercert") if request.transport else None
    headers = {"Content-Type": mediatypes.OCI_MANIFEST, "Docker-Content-Digest": DIGEST,
               "Content-Length": str(len(MANIFEST)), "X-Client-Cert": "yes" if peer else "no"}
    return web.Response(headers=headers) if request.method == "HEAD" else web.Response(
        body=MANIFEST, headers=headers)


async def serve(context: ssl.SSLContext) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/v2/app/manifests/v1", manifest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"127.0.0.1:{port}"


@pytest.fixture
async def tls_registry(pki: Path) -> AsyncIterator[str]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    runner, host = await serve(ctx)
    yield host
    await runner.cleanup()


@pytest.fixture
async def mtls_registry(pki: Path) -> AsyncIterator[str]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    runner, host = await serve(ctx)
    yield host
    await runner.cleanup()


def hosts_dir(root: Path, host: str, text: str) -> Hosts:
    folder = root / host
    folder.mkdir(parents=True)
    (folder / "hosts.toml").write_text(text)
    return Hosts(root)


async def test_loopback_default_is_https_without_verification(tls_registry: str) -> None:
    async with Resolver() as r:  # self-signed on loopback: accepted, as containerd's default
        _, d = await r.resolve(f"{tls_registry}/app:v1")
    assert d.digest == DIGEST


async def test_ca_from_hosts_toml(tls_registry: str, pki: Path, tmp_path: Path) -> None:
    shutil.copy(pki / "ca.pem", tmp_path / "ca.pem")
    strict = f'server = "https://{tls_registry}"\nskip_verify = false\n'
    async with Resolver(hosts_dir(tmp_path / "a", tls_registry, strict)) as r:
        with pytest.raises(Unavailable, match="certificate verify failed"):
            await r.resolve(f"{tls_registry}/app:v1")
    with_ca = f'server = "https://{tls_registry}"\nca = "{tmp_path / "ca.pem"}"\n'
    async with Resolver(hosts_dir(tmp_path / "b", tls_registry, with_ca)) as r:
        _, d = await r.resolve(f"{tls_registry}/app:v1")
    assert d.digest == DIGEST


async def test_client_certificate(mtls_registry: str, pki: Path, tmp_path: Path) -> None:
    base = f'server = "https://{mtls_registry}"\nca = "{pki / "ca.pem"}"\n'
    async with Resolver(hosts_dir(tmp_path / "a", mtls_registry, base)) as r:
        with pytest.raises(Unavailable):
            await r.resolve(f"{mtls_registry}/app:v1")
    pair = base + f'client = [["{pki / "client.pem"}", "{pki / "client.key"}"]]\n'
    async with Resolver(hosts_dir(tmp_path / "b", mtls_registry, pair)) as r:
        _, d = await r.resolve(f"{mtls_registry}/app:v1")
    assert d.digest == DIGEST
