"""The opt-in processing time: the histogram and the timing of a lane's pipeline."""

import asyncio

import pytest

from faststream_concurrent_aiokafka.core import metrics
from faststream_concurrent_aiokafka.core.histogram import BUCKETS_SEC, Histogram
from faststream_concurrent_aiokafka.core.settings import SubscriberSettings
from faststream_concurrent_aiokafka.engine.processing_time import timed


def test_observations_land_in_the_first_bucket_whose_bound_they_do_not_exceed() -> None:
    histogram = Histogram()
    for seconds in (0.0001, 0.001, 0.003, 0.003, 75.0):
        histogram.observe(seconds)

    snapshot = histogram.snapshot()
    cumulative = dict(snapshot.buckets)
    assert cumulative[0.0005] == 1
    assert cumulative[0.001] == 2  # a value equal to a bound counts in it (le)
    assert cumulative[0.0025] == 2
    assert cumulative[0.005] == 4
    assert cumulative[60.0] == 4
    assert cumulative[float("inf")] == snapshot.count == 5
    assert snapshot.sum == pytest.approx(75.0071)
    assert [bound for bound, _ in snapshot.buckets] == [*BUCKETS_SEC, float("inf")]


async def test_each_call_is_timed_also_when_it_raises() -> None:
    histogram = Histogram()

    async def process(record: object) -> object:
        await asyncio.sleep(0.02)
        if record == "bad":
            raise ValueError(record)
        return record

    run = timed(process, histogram)
    assert await run("ok") == "ok"
    with pytest.raises(ValueError, match="bad"):
        await run("bad")

    snapshot = histogram.snapshot()
    assert snapshot.count == 2
    assert dict(snapshot.buckets)[0.01] == 0
    assert snapshot.sum >= 0.04


def test_the_setting_is_off_by_default_and_must_be_a_bool() -> None:
    assert SubscriberSettings().measure_processing_time is False
    with pytest.raises(ValueError, match="measure_processing_time"):
        SubscriberSettings(measure_processing_time=1)  # type: ignore[arg-type]


def test_the_histogram_is_not_an_opentelemetry_instrument() -> None:
    assert metrics.PROCESSING_TIME not in metrics.METRICS
    assert metrics.PROCESSING_TIME.labels == ("group", "topic")
