"""Testing your failure policy without Kafka, under FastStream's ``TestKafkaBroker``.

    python -m examples.testing_policy       (no broker needed)

The app is declared as usual; the test publishes to the test broker, and the library's policy
runs there as in production: the handler is tried ``max_retries + 1`` times, then the message
is dead-lettered to the test broker, where a test subscriber receives it with its headers.
Copy the test function into your own test suite (pytest-asyncio runs it as is).
"""

import asyncio
import sys
from typing import Any

from faststream.kafka import KafkaBroker, KafkaMessage, TestKafkaBroker
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    configure_subscriber,
)

broker = KafkaBroker()
broker.add_middleware(KafkaConcurrentProcessingMiddleware)
calls: list[dict[str, Any]] = []

orders = configure_subscriber(
    broker.subscriber("orders", group_id="billing", ack_policy=AckPolicy.MANUAL),
    max_retries=2,
    retry_backoff_sec=0.001,
    retry_backoff_max_sec=0.001,
    dead_letter_topic="orders.dlq",
)


@orders
async def bill(order: dict[str, Any]) -> None:
    calls.append(order)
    raise TimeoutError("payment service down")


async def test_a_failing_order_is_tried_three_times_then_dead_lettered() -> None:
    letters: list[KafkaMessage] = []
    calls.clear()

    @broker.subscriber("orders.dlq")
    async def dead(msg: KafkaMessage) -> None:
        letters.append(msg)

    async with TestKafkaBroker(broker) as br:
        await br.publish({"id": 1}, "orders")

    assert len(calls) == 3
    assert len(letters) == 1
    assert letters[0].headers["x-dead-letter-exception-type"] == "TimeoutError"
    assert letters[0].headers["x-dead-letter-attempts"] == "3"


async def demo() -> None:
    """Run the test above once (what the project's own suite does)."""
    await test_a_failing_order_is_tried_three_times_then_dead_lettered()


def main() -> int:
    asyncio.run(demo())
    print(f"tried {len(calls)} times, then dead-lettered: the policy test passes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
