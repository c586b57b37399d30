"""A consumer service as it runs in production: concurrent processing, retries, a dead-letter
topic, and the two endpoints operators need.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 uvicorn examples.service:app --port 8000

- ``GET /health``: the health report as JSON, ``{"status": "ok" | "starting" | "degraded" |
  "failed", "reasons": [...]}``; HTTP 503 when failed (restart-worthy), 200 otherwise. Wire
  it to the liveness probe; alert on ``degraded`` through the metrics.
- ``GET /ready``: the same report; HTTP 200 only while messages are processed (ok or
  degraded), 503 while a consumer still joins its group (starting) or when failed. Wire it
  to the readiness probe.
- ``GET /metrics``: Prometheus text: the library's ``faststream_concurrent_*`` metrics next to
  FastStream's own per-message ones and the process's.

It reads orders (JSON ``{"id": 1, "amount": 9.5}``) from ``SERVICE_TOPIC`` (default
``orders``) in group ``SERVICE_GROUP``; an order without a positive amount fails, is tried
once more and then goes to ``SERVICE_DEAD_LETTER_TOPIC`` (default ``<topic>.dlq``).
"""

import asyncio
import json
import os
from typing import Any

from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.middlewares import AckPolicy
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from faststream_concurrent_aiokafka import (
    HealthReport,
    health_report,
    setup_concurrent_processing,
)
from faststream_concurrent_aiokafka.prometheus import ConcurrentProcessingCollector

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
TOPIC = os.environ.get("SERVICE_TOPIC", "orders")
GROUP = os.environ.get("SERVICE_GROUP", "order-service")
DEAD_LETTERS = os.environ.get("SERVICE_DEAD_LETTER_TOPIC", f"{TOPIC}.dlq")


class InvalidOrderError(ValueError):
    """An order no retry can fix: it ends in the dead-letter topic."""


broker = KafkaBroker(BOOTSTRAP, middlewares=[KafkaPrometheusMiddleware(registry=REGISTRY)])
# The broker, not broker.context: the app made below gives the broker a new context.
REGISTRY.register(ConcurrentProcessingCollector(broker))


@broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest")
async def handle_order(order: dict[str, Any]) -> None:
    if not float(order.get("amount", 0)) > 0:
        msg = f"order {order.get('id')} has no positive amount"
        raise InvalidOrderError(msg)
    await asyncio.sleep(0.002)  # stands for the database call that books the order


def report_response(report: HealthReport, *, healthy: bool) -> AsgiResponse:
    return AsgiResponse(
        json.dumps(report.as_dict()).encode(),
        status_code=200 if healthy else 503,
        headers={"content-type": "application/json"},
    )


@get
async def health(scope: Any) -> AsgiResponse:
    report = health_report(broker)
    return report_response(report, healthy=not report.is_failed)


@get
async def ready(scope: Any) -> AsgiResponse:
    report = health_report(broker)
    return report_response(report, healthy=report.is_ready)


@get
async def metrics(scope: Any) -> AsgiResponse:
    return AsgiResponse(generate_latest(REGISTRY), headers={"content-type": CONTENT_TYPE_LATEST})


app = AsgiFastStream(
    broker, asgi_routes=[("/health", health), ("/ready", ready), ("/metrics", metrics)]
)
setup_concurrent_processing(
    app,
    concurrency_limit=100,
    commit_batch_size=100,
    commit_batch_timeout_sec=1.0,
    max_retries=1,
    retry_backoff_sec=0.05,
    dead_letter_topic=DEAD_LETTERS,
)
