"""The app object ``faststream run tests.apps.cli_app:app`` imports, in every worker of
``--workers N``: FastStream's supervisor handles the signals and stops each worker's broker,
which drains its in-flight messages. Settings come from the environment, as for every app
here (``tests.apps._common``)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import ContextRepo, FastStream

from faststream_concurrent_aiokafka import stop_concurrent_processing
from tests.apps._common import AppSettings, build_broker, initialize

settings = AppSettings.from_env()
broker = build_broker(settings)


@asynccontextmanager
async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
    await initialize(context, settings)
    try:
        yield
    finally:
        await stop_concurrent_processing(context)


app = FastStream(broker, lifespan=lifespan)
