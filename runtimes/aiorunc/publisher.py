"""Events from the shim to the daemon: ``containerd.services.events.ttrpc.v1.Events/Forward``.

As Go's shim ``RemoteEventsPublisher``: every event is wrapped in a
``containerd.types.Envelope`` (timestamp, the shim's namespace, topic, the event
as ``Any`` with Go's type URL form, e.g. ``containerd.events.TaskExit``) and
forwarded over ttrpc to ``TTRPC_ADDRESS`` with the namespace in the
``containerd-namespace-ttrpc`` metadata.  :meth:`Publisher.publish` only queues
(never blocks a task call); one background task sends in order, reconnecting
and retrying each envelope with back-off (``MAX_ATTEMPTS``) before dropping it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import betterproto2

from aiocontainerd import ttrpc
from aiocontainerd.api.containerd.services.events.ttrpc.v1 import ForwardRequest
from aiocontainerd.api.containerd.types import Envelope
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.api.message_pool import default_message_pool

log = logging.getLogger("aiorunc.publisher")

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
MAX_ATTEMPTS = 8
_URL_PREFIX = "type.googleapis.com/"


def pack_any(msg: betterproto2.Message) -> pb.Any:
    """``msg`` as an ``Any`` whose type URL is the bare full name, as Go's ``typeurl`` writes it."""
    url = default_message_pool.type_to_url[type(msg)]
    if url.startswith(_URL_PREFIX):
        url = url[len(_URL_PREFIX):]
    return pb.Any(type_url=url, value=bytes(msg))


def timestamp(ns: int | None = None) -> pb.Timestamp:
    """A protobuf Timestamp for ``ns`` nanoseconds since the epoch (now by default)."""
    if ns is None:
        ns = time.time_ns()
    return pb.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


class Publisher:
    """Ordered, retrying, non-blocking event forwarder for one shim.

    ``address``: the daemon's ttrpc socket (``TTRPC_ADDRESS``); empty drops events.
    ``sent`` counts envelopes delivered (for tests and logs).
    """

    def __init__(self, address: str, namespace: str) -> None:
        self.address = address
        self.namespace = namespace
        self.sent = 0
        self._queue: collections.deque[Envelope] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._client: ttrpc.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def publish(self, topic: str, event: betterproto2.Message) -> None:
        """Queue ``event`` under ``topic`` (e.g. ``/tasks/exit``); returns at once."""
        if not self.address or self._closing:
            return
        env = Envelope(timestamp=timestamp(), namespace=self.namespace, topic=topic,
                       event=pack_any(event))
        self._queue.append(env)
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _send(self, env: Envelope) -> None:
        if self._client is None or self._client.closed:
            self._client = await ttrpc.Client.connect(self.address, timeout=5)
        await self._client.call(EVENTS_SERVICE, "Forward", ForwardRequest(envelope=env),
                                pb.Empty, timeout=5,
                                metadata={ttrpc.METADATA_NAMESPACE: self.namespace})

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            env = self._queue[0]
            for attempt in range(MAX_ATTEMPTS):
                try:
                    await self._send(env)
                    self.sent += 1
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    if self._client is not None:
                        client, self._client = self._client, None
                        try:
                            await client.close()
                        except Exception:
                            pass
                    if attempt == MAX_ATTEMPTS - 1 or self._closing:
                        log.warning("dropping event %s: %s", env.topic, e)
                        break
                    await asyncio.sleep(min(0.05 * 2 ** attempt, 2.0))
            self._queue.popleft()

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Flush the queue for up to ``timeout`` seconds, then stop and disconnect."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                pass
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._client is not None:
            try:
                await self._client.close()
            except Exception:
                pass
