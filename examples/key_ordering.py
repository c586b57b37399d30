"""Key ordering: events of one account apply in order, different accounts concurrently.

    python -m examples.key_ordering        (KAFKA_BOOTSTRAP_SERVERS, default 127.0.0.1:9092)

Each account's events carry the account id as the Kafka key. With ``ordering="key"`` the
library runs at most one event per key at a time, in offset order, while events of other
accounts run beside it; a slow account never takes the slots of the others.
"""

import asyncio
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from examples._support import BOOTSTRAP, create_topics, fully_committed, produce, unique
from faststream_concurrent_aiokafka import setup_concurrent_processing

ACCOUNTS = 20
EVENTS_PER_ACCOUNT = 25


@dataclass
class Outcome:
    expected: int
    applied: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    most_at_once: int = 0  # events running at the same moment, over all accounts
    committed: bool = False
    all_applied: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def in_order(self) -> bool:
        return all(seq == sorted(seq) for seq in self.applied.values())


def build_app(bootstrap: str, topic: str, group: str, outcome: Outcome) -> FastStream:
    broker = KafkaBroker(bootstrap, logger=None)
    app = FastStream(broker, logger=None)
    setup_concurrent_processing(app, concurrency_limit=50, ordering="key")
    running = 0

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def apply_event(event: dict[str, int | str]) -> None:
        nonlocal running
        running += 1
        outcome.most_at_once = max(outcome.most_at_once, running)
        await asyncio.sleep(0.005)  # the account's balance update, a database round trip
        outcome.applied[str(event["account"])].append(int(event["seq"]))
        running -= 1
        if sum(map(len, outcome.applied.values())) == outcome.expected:
            outcome.all_applied.set()

    return app


async def demo(bootstrap: str = BOOTSTRAP) -> Outcome:
    topic, group = unique("accounts"), unique("ledger")
    await create_topics(bootstrap, [topic], partitions=4)
    events = [
        (f"acct-{a}".encode(), json.dumps({"account": f"acct-{a}", "seq": s}).encode())
        for s in range(EVENTS_PER_ACCOUNT)
        for a in range(ACCOUNTS)
    ]
    await produce(bootstrap, topic, events)
    outcome = Outcome(expected=len(events))
    app = build_app(bootstrap, topic, group, outcome)
    runner = asyncio.create_task(app.run())
    await asyncio.wait_for(outcome.all_applied.wait(), timeout=60)
    app.exit()
    await runner
    outcome.committed = await fully_committed(bootstrap, group, topic, 4)
    return outcome


def main() -> int:
    outcome = asyncio.run(demo())
    print(f"accounts {len(outcome.applied)}, events {sum(map(len, outcome.applied.values()))}")
    print(f"every account's events applied in order: {outcome.in_order}")
    print(f"events running at once (over accounts): up to {outcome.most_at_once}")
    print(f"committed to the end: {outcome.committed}")
    return 0 if outcome.in_order and outcome.committed else 1


if __name__ == "__main__":
    sys.exit(main())
