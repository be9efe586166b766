"""Small asyncio helpers shared by the core."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def complete(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile, then re-raise
    the cancellation. For work that must not be abandoned half-way (a copy that
    would otherwise race its own clean-up, a committed write)."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True  # the caller was cancelled: finish the work first
            if task.done():
                result = task.result()  # its own error, if any, wins
                break
    if cancelled:
        raise asyncio.CancelledError
    return result


async def unless(aw: Awaitable[T], stop: Awaitable[Any]) -> tuple[bool, T | None]:
    """Await ``aw`` unless ``stop`` ends first: ``(True, result)``, or ``(False, None)``
    with ``aw`` cancelled. ``stop`` is cancelled either way; when both are ready at once
    ``aw``'s result wins (a queue item taken is never dropped)."""
    work = asyncio.ensure_future(aw)
    await either(work, stop)
    if work.done() and not work.cancelled():
        return True, work.result()
    return False, None


async def either(work: asyncio.Future[Any], stop: Awaitable[Any]) -> None:
    """Wait until ``work`` or ``stop`` ends; ``stop`` is then cancelled, and ``work`` too
    if it has not ended (not awaited: ``work.done()`` may still be False)."""
    watch = asyncio.ensure_future(stop)
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():   # the waiter may have been cancelled meanwhile
        fut.set_result(None)


async def wait_fd(fd: int, *, write: bool) -> None:
    """Until the non-blocking ``fd`` is readable (``write``: writable), on the running loop."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    if write:
        loop.add_writer(fd, _wake, fut)
    else:
        loop.add_reader(fd, _wake, fut)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)

