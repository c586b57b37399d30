"""A batch subscriber: bulk inserts of up to 100 records, several batches at once.

    python -m examples.batch        (KAFKA_BOOTSTRAP_SERVERS, default 127.0.0.1:9092)

With ``batch=True`` FastStream hands the handler a list of records; the library runs up to
``concurrency_limit`` batches at once, each as one unit of work, and commits a batch's offsets
once the whole batch finished. Ordering modes do not apply to batches (a batch mixes keys and
partitions), so a batch subscriber must stay ``"unordered"``.
"""

import asyncio
import json
import sys
from dataclasses import dataclass, field

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from examples._support import BOOTSTRAP, create_topics, fully_committed, produce, unique
from faststream_concurrent_aiokafka import setup_concurrent_processing

READINGS = 2000


@dataclass
class Outcome:
    expected: int
    stored: set[int] = field(default_factory=set)
    batch_sizes: list[int] = field(default_factory=list)
    most_at_once: int = 0
    committed: bool = False
    all_stored: asyncio.Event = field(default_factory=asyncio.Event)


def build_app(bootstrap: str, topic: str, group: str, outcome: Outcome) -> FastStream:
    broker = KafkaBroker(bootstrap, logger=None)
    app = FastStream(broker, logger=None)
    setup_concurrent_processing(app, concurrency_limit=4)
    running = 0

    @broker.subscriber(
        topic,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        batch=True,
        max_records=100,
    )
    async def store(readings: list[dict[str, int]]) -> None:
        nonlocal running
        running += 1
        outcome.most_at_once = max(outcome.most_at_once, running)
        await asyncio.sleep(0.02)  # one INSERT of the whole batch
        outcome.stored.update(reading["id"] for reading in readings)
        outcome.batch_sizes.append(len(readings))
        running -= 1
        if len(outcome.stored) == outcome.expected:
            outcome.all_stored.set()

    return app


async def demo(bootstrap: str = BOOTSTRAP) -> Outcome:
    topic, group = unique("readings"), unique("archiver")
    await create_topics(bootstrap, [topic], partitions=4)
    readings = [(None, json.dumps({"id": i, "celsius": i % 40}).encode()) for i in range(READINGS)]
    await produce(bootstrap, topic, readings)
    outcome = Outcome(expected=READINGS)
    app = build_app(bootstrap, topic, group, outcome)
    runner = asyncio.create_task(app.run())
    await asyncio.wait_for(outcome.all_stored.wait(), timeout=60)
    app.exit()
    await runner
    outcome.committed = await fully_committed(bootstrap, group, topic, 4)
    return outcome


def main() -> int:
    outcome = asyncio.run(demo())
    sizes = outcome.batch_sizes
    print(f"readings stored {len(outcome.stored)} in {len(sizes)} batches (largest {max(sizes)})")
    print(f"batches running at once: up to {outcome.most_at_once}")
    print(f"committed to the end: {outcome.committed}")
    return 0 if outcome.committed and len(outcome.stored) == READINGS else 1


if __name__ == "__main__":
    sys.exit(main())
