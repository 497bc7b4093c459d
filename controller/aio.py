"""Small asyncio helpers shared by the controller's tasks."""

from __future__ import annotations

import asyncio


async def cancel_all(tasks) -> None:
    """Cancel tasks and wait for them; their exceptions are swallowed (we are stopping)."""
    tasks = [t for t in tasks if t is not None]
    for t in tasks:
        t.cancel()
    for t in tasks:
        try:
            await t
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass
