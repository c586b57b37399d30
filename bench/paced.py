"""A producer at a fixed rate, for the latency runs, in a process of its own:

    python -m bench.paced BOOTSTRAP TOPIC RATE SECONDS PARTITIONS KEYING

It sends message ``i`` (the JSON int ``i``) at ``start + i / RATE``, with ``linger_ms=0`` so
each send leaves at once: the record's CreateTime, set by the client in ``send()``, is when it
was due (give or take the pacing tick), and the latency measured from it holds no
producer-side batching. Keys as ``bench.kafka_io.keyed`` (``none``: round-robin partitions;
``zipf``: Kafka's hash of Zipf keys). It prints, as JSON, how far behind its schedule it fell.
"""

import asyncio
import json
import sys
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.kafka_io import keyed
from bench.shapes import PAYLOADS

TICK_SEC = 0.002  # the pacing step: sends due within one step leave together


async def produce_paced(
    bootstrap: str, topic: str, *, rate: float, seconds: float, partitions: int, keying: str
) -> dict[str, Any]:
    count = max(1, int(rate * seconds))
    keys = keyed(keying, count)
    make = PAYLOADS["int"]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    await producer.start()
    behind_max = 0.0
    pending: list[Any] = []
    try:
        start = time.perf_counter()
        sent = 0
        while sent < count:
            now = time.perf_counter()
            due = min(count, int((now - start) * rate) + 1)
            if due > sent:
                behind_max = max(behind_max, now - (start + sent / rate))
            while sent < due:
                key, headers = keys[sent]
                partition = None if keying == "zipf" else sent % partitions
                pending.append(
                    await producer.send(
                        topic, make(sent), key=key, headers=headers, partition=partition
                    )
                )
                sent += 1
            await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter(), TICK_SEC))
        took = time.perf_counter() - start
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return {"sent": count, "seconds": took, "behind_max_ms": 1000 * behind_max}


def main(argv: list[str]) -> int:
    bootstrap, topic, rate, seconds, partitions, keying = argv
    result = asyncio.run(
        produce_paced(
            bootstrap,
            topic,
            rate=float(rate),
            seconds=float(seconds),
            partitions=int(partitions),
            keying=keying,
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
