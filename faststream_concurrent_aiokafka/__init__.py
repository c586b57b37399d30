"""Concurrent, commit-safe processing of Kafka messages for FastStream with aiokafka."""

from faststream_concurrent_aiokafka.commit_task import KafkaCommitTask
from faststream_concurrent_aiokafka.committer import KafkaBatchCommitter
from faststream_concurrent_aiokafka.config import ConcurrencySettings, Ordering
from faststream_concurrent_aiokafka.errors import (
    CommitterIsDeadError,
    ConcurrentProcessingSetupError,
)
from faststream_concurrent_aiokafka.gc_tuning import GcThresholds, tune_garbage_collector
from faststream_concurrent_aiokafka.handler import KafkaConcurrentHandler
from faststream_concurrent_aiokafka.lifecycle import (
    initialize_concurrent_processing,
    is_kafka_handler_healthy,
    setup_concurrent_processing,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.middleware import KafkaConcurrentProcessingMiddleware
from faststream_concurrent_aiokafka.rebalance import KafkaConcurrentRebalanceListener
from faststream_concurrent_aiokafka.subscriber_options import configure_subscriber

__all__ = [
    "CommitterIsDeadError",
    "ConcurrencySettings",
    "ConcurrentProcessingSetupError",
    "GcThresholds",
    "KafkaBatchCommitter",
    "KafkaCommitTask",
    "KafkaConcurrentHandler",
    "KafkaConcurrentProcessingMiddleware",
    "KafkaConcurrentRebalanceListener",
    "Ordering",
    "configure_subscriber",
    "initialize_concurrent_processing",
    "is_kafka_handler_healthy",
    "setup_concurrent_processing",
    "stop_concurrent_processing",
    "tune_garbage_collector",
]
