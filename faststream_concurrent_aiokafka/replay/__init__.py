"""Replaying dead letters: copy records of a dead-letter topic back to the topic each came
from (or another), selected by exception type and original place, resumable without
copying twice.

As a command: ``python -m faststream_concurrent_aiokafka.replay --bootstrap HOST:PORT --from
DLQ_TOPIC [--to TOPIC] [--group GROUP] [--dry-run]`` (``--help`` for filters and security).
From code: ``await replay_dead_letters(...)``.
"""

from faststream_concurrent_aiokafka.core.dead_letters import ReplayFilter
from faststream_concurrent_aiokafka.replay.connection import KafkaConnection
from faststream_concurrent_aiokafka.replay.copier import (
    Copy,
    ReplayReport,
    TargetsNotConfirmed,
    replay_dead_letters,
)

__all__ = [
    "Copy",
    "KafkaConnection",
    "ReplayFilter",
    "ReplayReport",
    "TargetsNotConfirmed",
    "replay_dead_letters",
]
