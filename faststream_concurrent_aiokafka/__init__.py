"""Concurrent, commit-safe processing of Kafka messages for FastStream with aiokafka.

``__all__`` holds what an application writes: setting the processing up and stopping it,
per-subscriber settings, health and monitoring, and the errors it may meet. The tools beside
it have modules of their own: ``.replay`` (replaying dead letters), ``.prometheus``,
``.otel`` and ``.gc_tuning``.

Layers, each importing only those below it (checked by ``lint-imports``): ``integration``
(FastStream glue) over ``engine`` (asyncio and aiokafka) over ``core`` (pure logic);
``compat`` holds every private FastStream or aiokafka access.
"""

import importlib
import warnings
from typing import TYPE_CHECKING, Any, Final

from faststream_concurrent_aiokafka.core.decode_errors import DECODE_ERRORS
from faststream_concurrent_aiokafka.core.errors import (
    ConcurrentProcessingSetupError,
    TransactionalPublishError,
)
from faststream_concurrent_aiokafka.core.health import HealthReport
from faststream_concurrent_aiokafka.core.snapshot import ProcessingSnapshot
from faststream_concurrent_aiokafka.engine.attempts import current_attempt
from faststream_concurrent_aiokafka.integration.handler import ConcurrentProcessing
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
from faststream_concurrent_aiokafka.integration.pausing import pause_processing, resume_processing
from faststream_concurrent_aiokafka.integration.subscriber_options import configure_subscriber

if TYPE_CHECKING:
    # The deprecated names below, for type checkers and IDEs; at run time ``__getattr__``
    # gives them, with a warning.
    from faststream_concurrent_aiokafka.core.dead_letters import (
        MAX_EXCEPTION_TEXT_BYTES as MAX_EXCEPTION_TEXT_BYTES,
    )
    from faststream_concurrent_aiokafka.core.decode_errors import (
        describe_exception as describe_exception,
    )
    from faststream_concurrent_aiokafka.core.errors import (
        CommitterIsDeadError as CommitterIsDeadError,
    )
    from faststream_concurrent_aiokafka.core.settings import (
        ConcurrencySettings as ConcurrencySettings,
    )
    from faststream_concurrent_aiokafka.core.settings import Ordering as Ordering
    from faststream_concurrent_aiokafka.core.settings import (
        ProcessingGuarantee as ProcessingGuarantee,
    )
    from faststream_concurrent_aiokafka.core.settings import (
        SubscriberSettings as SubscriberSettings,
    )
    from faststream_concurrent_aiokafka.core.snapshot import (
        PartitionSnapshot as PartitionSnapshot,
    )
    from faststream_concurrent_aiokafka.core.snapshot import (
        SubscriberSnapshot as SubscriberSnapshot,
    )
    from faststream_concurrent_aiokafka.core.snapshot import Totals as Totals
    from faststream_concurrent_aiokafka.engine.committer import (
        KafkaBatchCommitter as KafkaBatchCommitter,
    )
    from faststream_concurrent_aiokafka.engine.state import AdmittedMessage as AdmittedMessage
    from faststream_concurrent_aiokafka.gc_tuning import GcThresholds as GcThresholds
    from faststream_concurrent_aiokafka.gc_tuning import (
        tune_garbage_collector as tune_garbage_collector,
    )
    from faststream_concurrent_aiokafka.integration.handler import (
        KafkaConcurrentRebalanceListener as KafkaConcurrentRebalanceListener,
    )
    from faststream_concurrent_aiokafka.replay import KafkaConnection as KafkaConnection
    from faststream_concurrent_aiokafka.replay import ReplayFilter as ReplayFilter
    from faststream_concurrent_aiokafka.replay import ReplayReport as ReplayReport
    from faststream_concurrent_aiokafka.replay import (
        TargetsNotConfirmed as TargetsNotConfirmed,
    )
    from faststream_concurrent_aiokafka.replay import (
        replay_dead_letters as replay_dead_letters,
    )

    KafkaCommitTask = AdmittedMessage
    KafkaConcurrentHandler = ConcurrentProcessing

__all__ = [
    "DECODE_ERRORS",
    "ConcurrentProcessing",
    "ConcurrentProcessingSetupError",
    "HealthReport",
    "KafkaConcurrentProcessingMiddleware",
    "ProcessingSnapshot",
    "TransactionalPublishError",
    "configure_subscriber",
    "current_attempt",
    "health_report",
    "initialize_concurrent_processing",
    "is_kafka_handler_healthy",
    "pause_processing",
    "processing_snapshot",
    "resume_processing",
    "setup_concurrent_processing",
    "stop_concurrent_processing",
]

_CORE: Final = "faststream_concurrent_aiokafka.core"
_REPLAY: Final = "faststream_concurrent_aiokafka.replay"
_GC: Final = "faststream_concurrent_aiokafka.gc_tuning"
_ENGINE: Final = "faststream_concurrent_aiokafka.engine"
_HANDLER: Final = "faststream_concurrent_aiokafka.integration.handler"

# What the package exported before its __all__ was cut down (0.1's names, and
# TargetsNotConfirmed, added since): internals, or tools with a module of their own.
# Old name -> (module, name there). Listed in CHANGELOG.md.
MOVED: Final[dict[str, tuple[str, str]]] = {
    "AdmittedMessage": (f"{_ENGINE}.state", "AdmittedMessage"),
    "CommitterIsDeadError": (f"{_CORE}.errors", "CommitterIsDeadError"),
    "ConcurrencySettings": (f"{_CORE}.settings", "ConcurrencySettings"),
    "GcThresholds": (_GC, "GcThresholds"),
    "KafkaBatchCommitter": (f"{_ENGINE}.committer", "KafkaBatchCommitter"),
    "KafkaCommitTask": (f"{_ENGINE}.state", "AdmittedMessage"),
    "KafkaConcurrentHandler": (_HANDLER, "ConcurrentProcessing"),
    "KafkaConcurrentRebalanceListener": (_HANDLER, "KafkaConcurrentRebalanceListener"),
    "KafkaConnection": (_REPLAY, "KafkaConnection"),
    "MAX_EXCEPTION_TEXT_BYTES": (f"{_CORE}.dead_letters", "MAX_EXCEPTION_TEXT_BYTES"),
    "Ordering": (f"{_CORE}.settings", "Ordering"),
    "PartitionSnapshot": (f"{_CORE}.snapshot", "PartitionSnapshot"),
    "ProcessingGuarantee": (f"{_CORE}.settings", "ProcessingGuarantee"),
    "ReplayFilter": (_REPLAY, "ReplayFilter"),
    "ReplayReport": (_REPLAY, "ReplayReport"),
    "SubscriberSettings": (f"{_CORE}.settings", "SubscriberSettings"),
    "SubscriberSnapshot": (f"{_CORE}.snapshot", "SubscriberSnapshot"),
    "TargetsNotConfirmed": (_REPLAY, "TargetsNotConfirmed"),
    "Totals": (f"{_CORE}.snapshot", "Totals"),
    "describe_exception": (f"{_CORE}.decode_errors", "describe_exception"),
    "replay_dead_letters": (_REPLAY, "replay_dead_letters"),
    "tune_garbage_collector": (_GC, "tune_garbage_collector"),
}
_warned: set[str] = set()


def __getattr__(name: str) -> Any:
    """An old top-level name (PEP 562): the same object, with one ``DeprecationWarning`` per
    name saying where it lives now."""
    if name not in MOVED:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    module, attribute = MOVED[name]
    if name not in _warned:
        _warned.add(name)
        warnings.warn(
            f"{__name__}.{name} is deprecated: use `from {module} import {attribute}`",
            DeprecationWarning,
            stacklevel=2,
        )
    return getattr(importlib.import_module(module), attribute)
