"""Small asyncio helpers shared by the core."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

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
