"""Concurrent, commit-safe processing of Kafka messages for FastStream with aiokafka.

Layers, each importing only those below it (checked by ``lint-imports``): ``integration``
(FastStream glue) over ``engine`` (asyncio and aiokafka) over ``core`` (pure logic);
``compat`` holds every private FastStream or aiokafka access.
"""

from faststream_concurrent_aiokafka.core.dead_letters import MAX_EXCEPTION_TEXT_BYTES, ReplayFilter
from faststream_concurrent_aiokafka.core.decode_errors import DECODE_ERRORS, describe_exception
from faststream_concurrent_aiokafka.core.errors import (
    CommitterIsDeadError,
    ConcurrentProcessingSetupError,
    TransactionalPublishError,
)
from faststream_concurrent_aiokafka.core.health import HealthReport
from faststream_concurrent_aiokafka.core.settings import (
    ConcurrencySettings,
    Ordering,
    ProcessingGuarantee,
    SubscriberSettings,
)
from faststream_concurrent_aiokafka.core.snapshot import (
    PartitionSnapshot,
    ProcessingSnapshot,
    SubscriberSnapshot,
    Totals,
)
from faststream_concurrent_aiokafka.engine.committer import KafkaBatchCommitter
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage
from faststream_concurrent_aiokafka.gc_tuning import GcThresholds, tune_garbage_collector
from faststream_concurrent_aiokafka.integration.handler import (
    KafkaConcurrentHandler,
    KafkaConcurrentRebalanceListener,
)
from faststream_concurrent_aiokafka.integration.lifecycle import (
    initialize_concurrent_processing,
    is_kafka_handler_healthy,
    setup_concurrent_processing,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.integration.middleware import (
    KafkaConcurrentProcessingMiddleware,
)
from faststream_concurrent_aiokafka.integration.monitoring import (
    health_report,
    processing_snapshot,
)
from faststream_concurrent_aiokafka.integration.subscriber_options import configure_subscriber
from faststream_concurrent_aiokafka.replay import (
    KafkaConnection,
    ReplayReport,
    TargetsNotConfirmed,
    replay_dead_letters,
)

KafkaCommitTask = AdmittedMessage
"""The original name of ``AdmittedMessage`` (one admitted message, not a commit), kept."""

__all__ = [
    "DECODE_ERRORS",
    "MAX_EXCEPTION_TEXT_BYTES",
    "AdmittedMessage",
    "CommitterIsDeadError",
    "ConcurrencySettings",
    "ConcurrentProcessingSetupError",
    "GcThresholds",
    "HealthReport",
    "KafkaBatchCommitter",
    "KafkaCommitTask",
    "KafkaConcurrentHandler",
    "KafkaConcurrentProcessingMiddleware",
    "KafkaConcurrentRebalanceListener",
    "KafkaConnection",
    "Ordering",
    "PartitionSnapshot",
    "ProcessingGuarantee",
    "ProcessingSnapshot",
    "ReplayFilter",
    "ReplayReport",
    "SubscriberSettings",
    "SubscriberSnapshot",
    "TargetsNotConfirmed",
    "Totals",
    "TransactionalPublishError",
    "configure_subscriber",
    "describe_exception",
    "health_report",
    "initialize_concurrent_processing",
    "is_kafka_handler_healthy",
    "processing_snapshot",
    "replay_dead_letters",
    "setup_concurrent_processing",
    "stop_concurrent_processing",
    "tune_garbage_collector",
]
