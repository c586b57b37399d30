"""Retries with backoff, then a dead-letter topic for what keeps failing.

    python -m examples.retries_and_dead_letters   (KAFKA_BOOTSTRAP_SERVERS; 127.0.0.1:9092)

Payments call a flaky provider: a timeout is retried (up to ``max_retries``, with exponential
backoff and jitter, waiting inside the message's own task), and a payment the provider keeps
refusing ends on the dead-letter topic with headers saying where it came from and why. Every
input offset is committed once its payment was applied or dead-lettered, never before.
"""

import asyncio
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from examples._support import (
    BOOTSTRAP,
    create_topics,
    fully_committed,
    produce,
    read_topic,
    unique,
)
from faststream_concurrent_aiokafka import configure_subscriber, setup_concurrent_processing

PAYMENTS = 200


class ProviderTimeoutError(Exception):
    """The provider did not answer in time: worth another try."""


class PaymentRefusedError(Exception):
    """The provider refuses this payment, whatever we do."""


@dataclass
class Outcome:
    expected: int
    attempts: Counter[int] = field(default_factory=Counter)
    applied: set[int] = field(default_factory=set)
    dead_letters: list[dict[str, str]] = field(default_factory=list)
    committed: bool = False
    all_applied: asyncio.Event = field(default_factory=asyncio.Event)


def build_app(
    bootstrap: str, topic: str, dead_letter_topic: str, group: str, outcome: Outcome
) -> FastStream:
    broker = KafkaBroker(bootstrap, logger=None)
    app = FastStream(broker, logger=None)
    setup_concurrent_processing(app, concurrency_limit=50)
    payments = configure_subscriber(
        broker.subscriber(
            topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
        ),
        max_retries=3,
        retry_backoff_sec=0.01,
        retry_backoff_max_sec=0.1,
        dead_letter_topic=dead_letter_topic,
    )

    @payments
    async def pay(payment: dict[str, int]) -> None:
        payment_id = payment["id"]
        outcome.attempts[payment_id] += 1
        if payment_id % 50 == 7:
            raise PaymentRefusedError(f"payment {payment_id} refused")
        if payment_id % 10 == 3 and outcome.attempts[payment_id] == 1:
            raise ProviderTimeoutError("provider timed out")
        outcome.applied.add(payment_id)
        if len(outcome.applied) == outcome.expected:
            outcome.all_applied.set()

    return app


async def demo(bootstrap: str = BOOTSTRAP) -> Outcome:
    topic, dead, group = unique("payments"), unique("payments-dlq"), unique("payer")
    await create_topics(bootstrap, [topic, dead], partitions=2)
    await produce(
        bootstrap, topic, [(None, json.dumps({"id": i}).encode()) for i in range(PAYMENTS)]
    )
    refused = sum(1 for i in range(PAYMENTS) if i % 50 == 7)
    outcome = Outcome(expected=PAYMENTS - refused)
    app = build_app(bootstrap, topic, dead, group, outcome)
    runner = asyncio.create_task(app.run())
    records = await read_topic(bootstrap, dead, refused, timeout_ms=30_000)
    await asyncio.wait_for(outcome.all_applied.wait(), timeout=60)
    app.exit()
    await runner
    outcome.dead_letters = [
        {name: value.decode() for name, value in record.headers} for record in records
    ]
    outcome.committed = await fully_committed(bootstrap, group, topic, 2)
    return outcome


def main() -> int:
    # Each refused payment is also logged once at ERROR with its traceback; here the dead-letter
    # topic shows them instead. In a service, keep those lines.
    logging.getLogger("faststream_concurrent_aiokafka").setLevel(logging.CRITICAL)
    outcome = asyncio.run(demo())
    retried = sum(1 for count in outcome.attempts.values() if count > 1)
    print(f"payments applied {len(outcome.applied)}, retried {retried}")
    for headers in outcome.dead_letters:
        origin = "{}[{}]@{}".format(
            *(headers[f"x-dead-letter-{name}"] for name in ("topic", "partition", "offset"))
        )
        attempts, error = headers["x-dead-letter-attempts"], headers["x-dead-letter-exception-type"]
        print(f"dead letter from {origin} after {attempts} attempt(s): {error}")
    print(f"committed to the end: {outcome.committed}")
    return 0 if outcome.committed else 1


if __name__ == "__main__":
    sys.exit(main())
