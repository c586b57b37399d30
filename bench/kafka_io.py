"""Topics, fast pre-production and cluster facts for the benchmark.

Also runnable, for the memory runs that must produce from another process so the producer's
allocations stay out of the measured one::

    python -m bench.kafka_io BOOTSTRAP TOPIC COUNT PARTITIONS
"""

import asyncio
import sys
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.downstream import zipf_keys
from bench.shapes import PAYLOADS

ACCOUNTS = 50  # the accounts of the "accounts" keying


def keyed(keying: str, count: int) -> list[tuple[bytes | None, list[tuple[str, bytes]]]]:
    """Each message's Kafka key and headers: ``none``; ``zipf`` (record keys drawn Zipf, s=1.1
    over 10,000 keys); ``accounts`` (random record keys, an ``account`` header of 50 values)."""
    if keying == "none":
        return [(None, [])] * count
    if keying == "zipf":
        return [(b"k%d" % key, []) for key in zipf_keys(count)]
    if keying == "accounts":
        return [(uuid.uuid4().bytes, [("account", b"a%d" % (i % ACCOUNTS))]) for i in range(count)]
    msg = f"unknown keying {keying!r}"
    raise ValueError(msg)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def fill(
    bootstrap: str, topic: str, partitions: int, count: int, keying: str = "none"
) -> None:
    """A new topic holding ``count`` pre-produced messages (the paired benchmarks' input)."""
    await create_topic(bootstrap, topic, partitions)
    await produce(bootstrap, topic, count, partitions, keying=keying)


async def produce(
    bootstrap: str,
    topic: str,
    count: int,
    partitions: int,
    *,
    payload: str = "int",
    keying: str = "none",
) -> float:
    """Send ``count`` small messages round-robin over the partitions; returns the seconds.

    ``payload`` names a function of ``bench.shapes.PAYLOADS`` (message index -> bytes);
    ``keying`` the record keys and headers (see ``keyed``)."""
    make = PAYLOADS[payload]
    keys = keyed(keying, count)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=512 * 1024,
        acks=1,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending: list[Any] = []
        for i in range(count):
            # send() only enqueues (it waits only while the accumulator is full).
            key, headers = keys[i]
            # Zipf keys go where Kafka's partitioner puts them (by the key's hash), as keyed
            # data does; the rest round-robin.
            partition = None if keying == "zipf" else i % partitions
            pending.append(
                await producer.send(topic, make(i), key=key, headers=headers, partition=partition)
            )
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def cluster_info(bootstrap: str) -> dict[str, str]:
    """What the cluster says about itself; the broker's software version is not in the
    protocol, so pass ``--broker-label`` to name it in the report."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_cluster()
    finally:
        await admin.close()
    brokers = described.get("brokers", [])
    return {
        "bootstrap": bootstrap,
        "cluster_id": str(described.get("cluster_id")),
        "brokers": str(len(brokers)),
        "controller_id": str(described.get("controller_id")),
    }


def main(argv: list[str]) -> int:
    bootstrap, topic, count, partitions = argv[0], argv[1], int(argv[2]), int(argv[3])
    asyncio.run(produce(bootstrap, topic, count, partitions))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
