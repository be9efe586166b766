"""The real ``ctr images`` (import, export, ls, tag, rm) against an aiocontainerd process."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, blobs_on_disk
from tests.support.images import busybox_image, docker_save_tar, multi_platform, oci_layout_tar

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ctr_installed")]


def images(d: DaemonProcess) -> dict[str, list[str]]:
    rows = d.ctr("images", "ls").stdout.splitlines()[1:]
    return {r.split()[0]: r.split() for r in rows}


def test_import_ls_export_round_trip(daemon_process: DaemonProcess, tmp_short: Path) -> None:
    d = daemon_process
    image = busybox_image(layers=2)
    archive = tmp_short / "in.tar"
    archive.write_bytes(oci_layout_tar(image, "latest", image_name="docker.io/library/busybox:latest"))
    d.ctr("images", "import", "--no-unpack", "--all-platforms", str(archive))
    listed = images(d)
    assert image.digest in listed["docker.io/library/busybox:latest"]
    assert set(image.blobs) <= blobs_on_disk(d)
    labels = d.ctr("content", "ls").stdout
    assert "containerd.io/gc.ref.content.config=" + image.config.digest in labels
    out = tmp_short / "out.tar"
    d.ctr("images", "export", str(out), "docker.io/library/busybox:latest")
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
        index = json.load(tf.extractfile("index.json"))
    assert {f"blobs/sha256/{h.split(':')[1]}" for h in image.blobs} <= names
    assert index["manifests"][0]["digest"] == image.digest
    d.ctr("images", "tag", "docker.io/library/busybox:latest", "example.com/copy:1")
    assert image.digest in images(d)["example.com/copy:1"]


def test_docker_save_import(daemon_process: DaemonProcess, tmp_short: Path) -> None:
    d = daemon_process
    image = busybox_image(media="docker")
    archive = tmp_short / "save.tar"
    archive.write_bytes(docker_save_tar(image, "example.com/saved:v1"))
    d.ctr("images", "import", "--no-unpack", str(archive))
    assert "example.com/saved:v1" in images(d)


def test_rm_then_gc_leaves_no_blob(daemon_process: DaemonProcess, tmp_short: Path) -> None:
    d = daemon_process
    image = multi_platform()
    archive = tmp_short / "multi.tar"
    archive.write_bytes(oci_layout_tar(image, "1", image_name="example.com/multi:1"))
    d.ctr("images", "import", "--no-unpack", "--all-platforms", str(archive))
    assert set(image.blobs) <= blobs_on_disk(d)
    d.ctr("images", "rm", "--sync", "example.com/multi:1")
    assert images(d) == {}
    deadline = time.monotonic() + 10
    while blobs_on_disk(d) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert blobs_on_disk(d) == set()
    assert d.ctr("content", "ls").stdout.splitlines()[1:] == []


def test_bad_archive_is_refused(daemon_process: DaemonProcess, tmp_short: Path) -> None:
    d = daemon_process
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        data = b'{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",' \
               b'"digest":"sha256:' + b"0" * 64 + b'","size":3}]}'
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    archive = tmp_short / "bad.tar"
    archive.write_bytes(out.getvalue())
    r = d.ctr("images", "import", "--no-unpack", str(archive), check=False)
    assert r.returncode != 0
    assert images(d) == {}
