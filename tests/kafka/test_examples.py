"""The examples run against the real broker and do what they claim."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples import batch, key_ordering, retries_and_dead_letters
from examples.pipeline import expected_result, run_pipeline
from tests.kafka_helpers import BOOTSTRAP, committed_offsets, end_offsets, read_all

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
