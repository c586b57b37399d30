"""Prometheus metrics of the concurrent processing, read at scrape time.

Needs the ``prometheus`` extra (``pip install 'faststream-concurrent-aiokafka[prometheus]'``)::

    from prometheus_client import REGISTRY
    from faststream_concurrent_aiokafka.prometheus import ConcurrentProcessingCollector

    REGISTRY.register(ConcurrentProcessingCollector(broker))

Each scrape takes one ``processing_snapshot`` and one ``health_report``; nothing is counted
on the message path. The metrics and their meaning are in ``core.metrics``.
"""

import logging
from collections.abc import Iterator

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    msg = (
        "faststream_concurrent_aiokafka.prometheus needs prometheus-client: "
        "pip install 'faststream-concurrent-aiokafka[prometheus]'"
    )
    raise ImportError(msg) from exc

from faststream_concurrent_aiokafka.core import metrics
from faststream_concurrent_aiokafka.core.health import HealthReport
from faststream_concurrent_aiokafka.core.snapshot import ProcessingSnapshot
from faststream_concurrent_aiokafka.integration.monitoring import (
    ContextSource,
    current_context,
    health_report,
    processing_snapshot,
)

logger = logging.getLogger("faststream_concurrent_aiokafka")

__all__ = ["ConcurrentProcessingCollector"]


class ConcurrentProcessingCollector:
    """A custom collector: ``registry.register(ConcurrentProcessingCollector(broker))``.

    ``context``: the broker (its current context is read at each scrape: FastStream gives a
    broker a new one when an app is made around it), or the ``ContextRepo`` the processing
    was initialised in. It may be registered before the processing starts and outlive it:
    while nothing runs, there are no per-subscriber samples and health is ``failed``.
    """

    def __init__(self, context: ContextSource) -> None:
        self._context = context

    def describe(self) -> list[Metric]:
        """The metric names, without reading the processing (for the registry's checks)."""
        return list(_families(ProcessingSnapshot.stopped(), HealthReport("ok")))

    def collect(self) -> Iterator[Metric]:
        try:
            snapshot = processing_snapshot(current_context(self._context))
            health = health_report(current_context(self._context))
        except TimeoutError:
            # The event loop did not answer within 5 s (blocked by CPU-bound work?): this
            # scrape goes without these metrics rather than hanging.
            logger.warning("Concurrent processing metrics skipped: its event loop is blocked")
            return
        yield from _families(snapshot, health)


def _families(snapshot: ProcessingSnapshot, health: HealthReport) -> Iterator[Metric]:
    for metric, samples in metrics.measure(snapshot, health).items():
        family: GaugeMetricFamily | CounterMetricFamily
        if metric.kind == "counter":
            family = CounterMetricFamily(metric.name, metric.help, labels=metric.labels)
        else:
            family = GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)
        for labels, value in samples:
            family.add_metric(list(labels), value)
        yield family
    processing = metrics.PROCESSING_TIME
    histogram = HistogramMetricFamily(processing.name, processing.help, labels=processing.labels)
    for labels, measured in metrics.histograms(snapshot):
        buckets = [(_bound(le), count) for le, count in measured.buckets]
        histogram.add_metric(list(labels), buckets, measured.sum)
    yield histogram


def _bound(seconds: float) -> str:
    return "+Inf" if seconds == float("inf") else repr(seconds)
