"""A bare broker, no FastStream app object: nothing but the library handles the signals.

It starts the broker and waits forever; on SIGTERM/SIGINT the library's own handler drains
and commits the in-flight messages, then re-raises the signal so the process dies by it.
"""

import asyncio

from tests.apps._common import AppSettings, build_broker, configure_logging, initialize


async def serve(settings: AppSettings) -> None:
    broker = build_broker(settings)
    await initialize(broker.context, settings)
    await broker.start()
    await asyncio.Event().wait()


def main() -> None:
    configure_logging()
    asyncio.run(serve(AppSettings.from_env()))


if __name__ == "__main__":
    main()
