"""An app for ``faststream run tests.apps.logging_app:app``: FastStream's default logging,
every message failing once (``FCA_APP_FAIL=once``) or on every attempt (``always``),
``max_retries=2``, no dead-letter topic."""

import os
from collections import Counter

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import setup_concurrent_processing
from tests.apps._common import ENV_BOOTSTRAP, ENV_FAIL, ENV_GROUP, ENV_TOPIC


class FlakyError(Exception):
    """What the handler raises."""


broker = KafkaBroker(os.environ[ENV_BOOTSTRAP])
app = FastStream(broker)
setup_concurrent_processing(
    app,
    concurrency_limit=50,
    max_retries=2,
    retry_backoff_sec=0.01,
    retry_backoff_max_sec=0.02,
    commit_batch_timeout_sec=0.5,
)
attempts: Counter[int] = Counter()
always = os.environ.get(ENV_FAIL) == "always"


@broker.subscriber(
    os.environ[ENV_TOPIC],
    group_id=os.environ[ENV_GROUP],
    ack_policy=AckPolicy.MANUAL,
    auto_offset_reset="earliest",
)
async def handle(body: int) -> None:
    attempts[body] += 1
    if always or attempts[body] == 1:
        msg = f"flaky {body}"
        raise FlakyError(msg)
