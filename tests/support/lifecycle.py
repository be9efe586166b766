"""A base for the support servers that run between ``start()`` and ``stop()``."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class StartStop:
    """``async with`` calls ``start()`` (and ``stop()`` should it fail) and ``stop()`` at exit."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
