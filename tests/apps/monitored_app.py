"""An ASGI service scraped by a real Prometheus in tests/kafka/test_prometheus_end_to_end.py:
the library's collector on ``/metrics``, orders as in examples/service.py, and a way to
stall: an order ``{"stall_sec": N}`` runs N seconds (``stall_warning_sec`` is 1 s); its
processing time is measured (``measure_processing_time``), and a rate limit far above the
load is set (its panel has a limit to show).

    uvicorn tests.apps.monitored_app:app --port PORT

Environment: BOOTSTRAP, TOPIC, GROUP, DEAD_LETTER_TOPIC.
"""

import asyncio
import os
from typing import Any

from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from faststream_concurrent_aiokafka import setup_concurrent_processing
from faststream_concurrent_aiokafka.prometheus import ConcurrentProcessingCollector

env = os.environ
broker = KafkaBroker(env["BOOTSTRAP"], logger=None)
registry = CollectorRegistry()
registry.register(ConcurrentProcessingCollector(broker))


@broker.subscriber(
    env["TOPIC"], group_id=env["GROUP"], ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
)
async def handle_order(order: dict[str, Any]) -> None:
    await asyncio.sleep(float(order.get("stall_sec", 0.002)))
    if not float(order.get("amount", 0)) > 0:
        msg = f"order {order.get('id')} has no positive amount"
        raise ValueError(msg)


@get
async def metrics(scope: Any) -> AsgiResponse:
    return AsgiResponse(generate_latest(registry), headers={"content-type": CONTENT_TYPE_LATEST})


app = AsgiFastStream(broker, asgi_routes=[("/metrics", metrics)])
setup_concurrent_processing(
    app,
    concurrency_limit=50,
    commit_batch_timeout_sec=0.5,
    max_retries=1,
    retry_backoff_sec=0.01,
    dead_letter_topic=env["DEAD_LETTER_TOPIC"],
    stall_warning_sec=1.0,
    measure_processing_time=True,
    max_messages_per_sec=1000,  # well above the load: its dashboard panel has a limit to show
)
