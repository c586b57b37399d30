"""A FastStream app run the usual way, ``asyncio.run(app.run())``: FastStream handles the
signals and stops the broker, which drains the in-flight messages.

Initialisation happens in the lifespan, before the broker starts; the handler stops after it.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import ContextRepo, FastStream

from faststream_concurrent_aiokafka import stop_concurrent_processing
from tests.apps._common import AppSettings, build_broker, configure_logging, initialize


def main() -> None:
    configure_logging()
    settings = AppSettings.from_env()
    broker = build_broker(settings)

    @asynccontextmanager
    async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
        await initialize(context, settings)
        try:
            yield
        finally:
            await stop_concurrent_processing(context)

    app = FastStream(broker, lifespan=lifespan, logger=None)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()
