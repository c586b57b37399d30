"""OpenTelemetry metrics of the concurrent processing: observable instruments, read when
the SDK collects. For services that export FastStream's ``KafkaTelemetryMiddleware``
metrics already.

Needs the ``otel`` extra (``pip install 'faststream-concurrent-aiokafka[otel]'``) and an
OpenTelemetry SDK configured by the application::

    from faststream_concurrent_aiokafka.otel import ConcurrentProcessingMetrics

    ConcurrentProcessingMetrics(broker)  # on the global MeterProvider

The instruments are those of the Prometheus collector, with the same names (counters
without ``_total``: OpenTelemetry's Prometheus exporter adds it) and attributes.
"""

import time
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Final

try:
    from opentelemetry.metrics import (
        CallbackOptions,
        MeterProvider,
        Observation,
        get_meter,
    )
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    msg = (
        "faststream_concurrent_aiokafka.otel needs opentelemetry-api: "
        "pip install 'faststream-concurrent-aiokafka[otel]'"
    )
    raise ImportError(msg) from exc

from faststream_concurrent_aiokafka.core import metrics
from faststream_concurrent_aiokafka.core.health import HealthReport
from faststream_concurrent_aiokafka.integration.monitoring import (
    ContextSource,
    current_context,
    health_report,
    processing_snapshot,
)

__all__ = ["ConcurrentProcessingMetrics"]

Observer = Callable[[CallbackOptions], Iterable[Observation]]

_REUSE_SEC: Final = 0.5
"""One collection calls every instrument's callback in turn: they share one snapshot."""


class ConcurrentProcessingMetrics:
    """Creates one observable instrument per metric on ``meter_provider`` (default: the
    global one). ``context``: the broker (read at each collection) or the ``ContextRepo``
    the processing was initialised in."""

    def __init__(
        self, context: ContextSource, *, meter_provider: MeterProvider | None = None
    ) -> None:
        self._context = context
        self._measured: dict[metrics.Metric, list[metrics.Sample]] = {}
        self._measured_at = -_REUSE_SEC
        meter = get_meter(__name__, _version(), meter_provider=meter_provider)
        for metric in metrics.METRICS:
            create = (
                meter.create_observable_counter
                if metric.kind == "counter"
                else meter.create_observable_gauge
            )
            create(
                metric.name,
                callbacks=[self._observer(metric)],
                unit=metric.unit,
                description=metric.help,
            )

    def _observer(
        self, metric: metrics.Metric
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(value, dict(zip(metric.labels, labels, strict=True)))
                for labels, value in self._measure().get(metric, [])
            ]

        return observe

    def _measure(self) -> dict[metrics.Metric, list[metrics.Sample]]:
        now = time.monotonic()
        if now - self._measured_at >= _REUSE_SEC:
            try:
                snapshot = processing_snapshot(current_context(self._context))
                health: HealthReport = health_report(current_context(self._context))
            except TimeoutError:  # the event loop is blocked: nothing this time
                return {}
            self._measured = metrics.measure(snapshot, health)
            self._measured_at = now
        return self._measured


def _version() -> str:
    try:
        return version("faststream-concurrent-aiokafka")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return ""
