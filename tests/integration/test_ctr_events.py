"""The real ``ctr events`` (containerd 1.6) watching an aiocontainerd process.

``ctr events`` prints one line per event it can decode:
``<timestamp: 4 words> <namespace> <topic> <event as JSON>``; an event whose
type URL it cannot resolve is skipped with a warning on stderr, so every line
asserted here also proves the type URL is the one 1.6 expects.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, need_ctr
from tests.support.images import busybox_image, oci_layout_tar

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _ctr() -> None:
    need_ctr()


class Events:
    """A running ``ctr events`` and the lines it printed, parsed."""

    def __init__(self, d: DaemonProcess, *filters: str) -> None:
        self.proc = subprocess.Popen(["ctr", "--address", d.address, "events", *filters],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[tuple[str, str, dict]] = queue.Queue()
        self.raw: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            parts = line.split(" ", 6)
            if len(parts) == 7:
                self.lines.put((parts[4], parts[5], json.loads(parts[6]) if parts[6].strip() else {}))

    def next(self, timeout: float = 10) -> tuple[str, str, dict]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event line within {timeout}s; printed so far: {self.raw}; "
                                 f"stderr: {self.stop()}") from None

    def take(self, n: int) -> list[tuple[str, str, dict]]:
        return [self.next() for _ in range(n)]

    def sync(self, d: DaemonProcess) -> None:
        """Wait until ``ctr events`` is subscribed: make marker namespaces until one is seen."""
        for i in range(50):
            d.ctr("namespaces", "create", f"sync{i}")
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            assert line[1] == "/namespaces/create", line
            self._drain()
            return
        raise AssertionError(f"ctr events never printed an event: {self.stop()}")

    def _drain(self) -> None:
        time.sleep(0.3)  # markers sent before the first one seen may still arrive
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            assert line[0].startswith("sync"), line

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err or ""


@pytest.fixture
def events(daemon_process: DaemonProcess) -> Iterator[Events]:
    e = Events(daemon_process)
    e.sync(daemon_process)
    yield e
    e.stop()


def test_namespace_events(daemon_process: DaemonProcess, events: Events) -> None:
    d = daemon_process
    d.ctr("namespaces", "create", "evx", "a=1")
    d.ctr("namespaces", "label", "evx", "a=2")
    d.ctr("namespaces", "rm", "evx")
    assert events.take(3) == [
        ("evx", "/namespaces/create", {"name": "evx", "labels": {"a": "1"}}),
        ("evx", "/namespaces/update", {"name": "evx", "labels": {"a": "2"}}),
        ("evx", "/namespaces/delete", {"name": "evx"}),
    ]


def test_image_events(daemon_process: DaemonProcess, events: Events, tmp_short: Path) -> None:
    d = daemon_process
    image = busybox_image()
    archive = tmp_short / "in.tar"
    archive.write_bytes(oci_layout_tar(image, "latest", image_name="docker.io/library/busybox:latest"))
    d.ctr("images", "import", "--no-unpack", str(archive), namespace="imgs")
    ns, topic, event = events.next()
    assert (ns, topic, event["name"]) == ("imgs", "/images/create", "docker.io/library/busybox:latest")
    d.ctr("images", "tag", "docker.io/library/busybox:latest", "example.com/copy:1", namespace="imgs")
    assert events.next() == ("imgs", "/images/create", {"name": "example.com/copy:1"})
    d.ctr("images", "rm", "example.com/copy:1", namespace="imgs")
    assert events.next() == ("imgs", "/images/delete", {"name": "example.com/copy:1"})


def test_snapshot_events(daemon_process: DaemonProcess, events: Events) -> None:
    d = daemon_process
    sn = ["snapshots", "--snapshotter", "native"]
    d.ctr(*sn, "prepare", "k1", namespace="snaps")
    d.ctr(*sn, "commit", "n1", "k1", namespace="snaps")
    d.ctr(*sn, "prepare", "k2", "n1", namespace="snaps")
    d.ctr(*sn, "rm", "k2", namespace="snaps")
    assert events.take(4) == [  # 1.6 knows no ``snapshotter`` field: it is not printed
        ("snaps", "/snapshot/prepare", {"key": "k1"}),
        ("snaps", "/snapshot/commit", {"key": "k1", "name": "n1"}),
        ("snaps", "/snapshot/prepare", {"key": "k2", "parent": "n1"}),
        ("snaps", "/snapshot/remove", {"key": "k2"}),
    ]


def test_filters_on_topic_and_namespace(daemon_process: DaemonProcess) -> None:
    d = daemon_process
    d.ctr("namespaces", "create", "keep")
    watch = Events(d, 'topic=="/namespaces/delete"', "namespace==keep")
    try:
        for i in range(50):  # until subscribed: label changes in "keep" pass the second filter
            d.ctr("namespaces", "label", "keep", f"i={i}")
            try:
                assert watch.lines.get(timeout=0.5)[:2] == ("keep", "/namespaces/update")
                break
            except queue.Empty:
                continue
        else:
            raise AssertionError(f"ctr events never printed: {watch.stop()}")
        time.sleep(0.3)
        while not watch.lines.empty():
            assert watch.lines.get_nowait()[:2] == ("keep", "/namespaces/update")
        d.ctr("namespaces", "create", "other")          # matches neither filter: not shown
        d.ctr("namespaces", "rm", "other")              # the topic filter: shown
        d.ctr("namespaces", "label", "keep", "z=1")     # the namespace filter: shown
        assert watch.take(2) == [
            ("other", "/namespaces/delete", {"name": "other"}),
            ("keep", "/namespaces/update", {"name": "keep", "labels": {"z": "1"}}),
        ]
    finally:
        watch.stop()
