"""Which event loop the unit tests run on: a module that sets ``VIRTUAL_CLOCK = True`` gets
one whose clock jumps from timer to timer (``tests.fakes.VirtualClockLoop``), the others
asyncio's own."""

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from tests.fakes import VirtualClockLoop


def pytest_asyncio_loop_factories(
    config: Any, item: Any
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if getattr(item.module, "VIRTUAL_CLOCK", False):
        return {"virtual-clock": VirtualClockLoop}
    return {"asyncio": asyncio.new_event_loop}
