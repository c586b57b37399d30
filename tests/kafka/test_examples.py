"""The examples run against the real broker and do what they claim."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples import batch, key_ordering, retries_and_dead_letters, testing_policy
from examples.pipeline import expected_result, run_pipeline
from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_offsets,
    create_topic,
    end_offsets,
    produce,
    read_all,
    unique,
    wait_until,
)

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]


async def test_pipeline_publishes_every_enriched_order_and_commits_all_input() -> None:
    messages = 2000
    result = await run_pipeline(BOOTSTRAP, messages)
    print(f"\n{result.summary()}")

    assert result.processed == messages
    assert result.failed == 0
    assert result.output_records == messages
    assert result.valid_output_records == messages
    # Read back independently of the example's own count.
    output_ends = await end_offsets(result.output_topic, result.partitions)
    assert sum(output_ends.values()) == messages, "exactly one output record per order"
    records = await read_all(result.output_topic, messages)
    values = [json.loads(value) if value else None for _key, value, _headers in records]
    assert None not in values, "an empty/None result was published"
    by_order = {value["order_id"]: value for value in values if value is not None}
    assert len(by_order) == messages, "an order was published twice or is missing"
    assert by_order == {order_id: expected_result(order_id) for order_id in range(messages)}
    # After the app stopped, the input topic is committed to its end.
    input_ends = await end_offsets(result.input_topic, result.partitions)
    assert await committed_offsets(result.group, result.input_topic) == input_ends
    assert result.committed == input_ends
    assert result.ok


def test_pipeline_runs_as_a_module() -> None:
    """``python -m examples.pipeline`` with a small run: exit code 0 and the summary."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "examples.pipeline", "--messages", "200"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "output records       200" in done.stdout
    assert "valid enriched       200" in done.stdout
    assert "committed == end     yes" in done.stdout
    assert done.stdout.rstrip().endswith("OK")


def test_demo_prints_plain_progress_lines_when_not_on_a_terminal() -> None:
    """Piped (CI, ``| tee``, a container log), the demo writes no carriage-return frames:
    plain progress lines, then its closing table."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--messages", "300", "--latency-ms", "5"],
        cwd=REPO,
        env=env,
        capture_output=True,  # bytes: text mode would turn a carriage return into a newline
        timeout=120,
        check=False,
    )
    printed = done.stdout.decode()
    assert done.returncode == 0, printed + done.stderr.decode()
    assert b"\r" not in done.stdout
    lines = printed.splitlines()
    for mode in ("sequential", "concurrent"):
        progress = [line for line in lines if line.startswith(f"  {mode}") and "msg/s" in line]
        assert progress, printed
        assert progress[-1].split()[1] == "300/300", progress
    table = lines[lines.index(next(line for line in lines if line.startswith("mode"))) :]
    assert any(line.startswith("concurrent") and line.endswith("yes") for line in table), table


async def test_key_ordering_example_applies_each_account_in_order_and_accounts_concurrently() -> (
    None
):
    outcome = await key_ordering.demo(BOOTSTRAP)

    assert len(outcome.applied) == key_ordering.ACCOUNTS
    assert all(
        seq == list(range(key_ordering.EVENTS_PER_ACCOUNT)) for seq in outcome.applied.values()
    )
    assert outcome.most_at_once > 1
    assert outcome.most_at_once <= key_ordering.ACCOUNTS  # one per account at most
    assert outcome.committed


async def test_retries_example_retries_timeouts_and_dead_letters_refusals() -> None:
    outcome = await retries_and_dead_letters.demo(BOOTSTRAP)

    refused = {i for i in range(retries_and_dead_letters.PAYMENTS) if i % 50 == 7}
    assert outcome.applied == set(range(retries_and_dead_letters.PAYMENTS)) - refused
    assert all(outcome.attempts[i] == 4 for i in refused)  # max_retries=3
    assert all(outcome.attempts[i] == 2 for i in outcome.applied if i % 10 == 3)
    assert len(outcome.dead_letters) == len(refused)
    assert {h["x-dead-letter-exception-type"] for h in outcome.dead_letters} == {
        "PaymentRefusedError"
    }
    assert outcome.committed


async def test_batch_example_stores_every_reading_in_concurrent_batches() -> None:
    outcome = await batch.demo(BOOTSTRAP)

    assert outcome.stored == set(range(batch.READINGS))
    assert max(outcome.batch_sizes) <= 100
    assert outcome.most_at_once > 1
    assert outcome.committed


# ---- the service: /health and /metrics over HTTP, under uvicorn ---------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """A scrape parsed by prometheus_client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


async def test_service_serves_health_and_metrics_of_a_run_with_dead_letters(
    tmp_path: Path,
) -> None:
    """2000 orders over 4 partitions, every 10th invalid (raises on every attempt);
    max_retries=1 and a dead-letter topic. Scraped over HTTP after the run."""
    topic, group = unique("svc-orders"), unique("g-svc")
    dead_letters = f"{topic}.dlq"
    partitions, count = 4, 2000
    await create_topic(topic, partitions)
    await create_topic(dead_letters, 1)
    orders = [
        json.dumps({"id": i, "amount": 0 if i % 10 == 9 else 10.5}).encode() for i in range(count)
    ]
    await produce(topic, orders, partitions=partitions)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP,
        "PYTHONPATH": str(REPO),
        "SERVICE_TOPIC": topic,
        "SERVICE_GROUP": group,
        "SERVICE_DEAD_LETTER_TOPIC": dead_letters,
    }
    # FastStream logs every message: to a file, as a pipe nobody reads would fill and block.
    log = tmp_path / "service.log"
    with log.open("w") as out:
        server = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
            [sys.executable, "-m", "uvicorn", "examples.service:app", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        async def answers() -> bool:
            try:
                status, _ = await asyncio.to_thread(http_get, f"{base}/health")
            except OSError:
                return False
            return status == 200

        await wait_until(answers, timeout=60)
        processed = "faststream_concurrent_processed_messages_total"

        async def scraped() -> Samples:
            status, text = await asyncio.to_thread(http_get, f"{base}/metrics")
            assert status == 200
            return parse_metrics(text)

        async def all_processed() -> bool:
            return total(await scraped(), processed, group=group) == count

        await wait_until(all_processed, timeout=90)
        samples = await scraped()
        assert total(samples, processed, group=group, outcome="ok") == 1800
        assert total(samples, processed, group=group, outcome="dead_lettered") == 200
        assert total(samples, processed, group=group, outcome="failed") == 0
        assert total(samples, "faststream_concurrent_retries_total", group=group) == 200
        assert total(samples, "faststream_concurrent_in_flight_messages", group=group) == 0
        assert total(samples, "faststream_concurrent_uncommitted_messages", group=group) == 0
        assert total(samples, "faststream_concurrent_commits_total", result="failed") == 0
        assert total(samples, "faststream_concurrent_health", status="ok") == 1
        # FastStream's own Prometheus middleware shares the registry.
        assert any(name.startswith("faststream_received_") for name, _ in samples)

        status, body = await asyncio.to_thread(http_get, f"{base}/health")
        assert (status, json.loads(body)) == (200, {"status": "ok", "reasons": []})
        status, body = await asyncio.to_thread(http_get, f"{base}/ready")
        assert (status, json.loads(body)) == (200, {"status": "ok", "reasons": []})
    finally:
        server.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(server.wait, 60)
    # uvicorn re-raises the signal once it shut down gracefully.
    assert returncode in {0, -signal.SIGTERM}, log.read_text()[-3000:]
    assert "Application shutdown complete" in log.read_text()
    ends = await end_offsets(topic, partitions)
    assert await committed_offsets(group, topic) == ends
    assert sum((await end_offsets(dead_letters, 1)).values()) == 200


async def test_testing_policy_example_runs_its_policy_test_under_test_kafka_broker() -> None:
    await testing_policy.demo()

    assert len(testing_policy.calls) == 3
