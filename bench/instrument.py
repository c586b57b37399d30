"""Counters the benchmark reads without touching the library's files.

Installed only inside a worker process, by wrapping two methods at class level:

* ``aiokafka.consumer.fetcher.Fetcher._proc_fetch_request``: one call per fetch request sent.
* ``aiokafka.consumer.fetcher.PartitionRecords.__init__``: one per partition in a fetch
  response that carried records; adds up the record bytes received.
* ``Fetching.pause`` (``ConsumerLane.pause`` in older checkouts): counted when a consumer goes
  from running to paused (backpressure); only in this library's runs (the other package's
  internals are never looked at).

Besides, a ``gc.callbacks`` hook counts CPython's collections by generation and the time they
took. The wrappers cost one Python call per fetch or pause, the hook two per collection,
nothing per message.
"""

import gc
import importlib
import time
from dataclasses import dataclass
from typing import Any

from aiokafka.consumer.fetcher import Fetcher, PartitionRecords


@dataclass
class Counters:
    fetch_requests: int = 0
    fetched_bytes: int = 0
    pauses: int = 0
    gc_gen0: int = 0  # collections of (at most) each generation
    gc_gen1: int = 0
    gc_gen2: int = 0
    gc_sec: float = 0.0  # time spent in them


COUNTERS = Counters()
_installed = False


def _pausing_class() -> Any:
    """This library's class whose ``pause()`` pauses a consumer: a lane's ``Fetching``, or
    ``ConsumerLane`` in a checkout from before it (bench.paired against an older commit)."""
    try:
        module = importlib.import_module("faststream_concurrent_aiokafka.engine.state")
    except ImportError:
        module = importlib.import_module("faststream_concurrent_aiokafka.lane")
    return getattr(module, "Fetching", None) or module.ConsumerLane


def install(*, pauses: bool = True) -> Counters:
    """Wrap the fetcher (and, with ``pauses``, this library's lanes) once per process."""
    global _installed  # noqa: PLW0603 - once per worker process
    if _installed:
        return COUNTERS
    _installed = True

    send_fetch = Fetcher._proc_fetch_request

    async def counted_fetch(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
        COUNTERS.fetch_requests += 1
        return await send_fetch(self, assignment, node_id, request)

    Fetcher._proc_fetch_request = counted_fetch

    make_records = PartitionRecords.__init__

    def counted_records(self: Any, tp: Any, records: Any, *args: Any, **kwargs: Any) -> None:
        COUNTERS.fetched_bytes += int(records.size_in_bytes())
        make_records(self, tp, records, *args, **kwargs)

    PartitionRecords.__init__ = counted_records

    gc.callbacks.append(_count_collection)
    if not pauses:
        return COUNTERS
    lane = _pausing_class()
    pause = lane.pause

    def counted_pause(self: Any) -> None:
        if not self.paused:
            COUNTERS.pauses += 1
        pause(self)

    lane.pause = counted_pause
    return COUNTERS


_collection_started = 0.0


def _count_collection(phase: str, info: dict[str, int]) -> None:
    global _collection_started  # noqa: PLW0603 - one collection at a time
    if phase == "start":
        _collection_started = time.perf_counter()
        return
    COUNTERS.gc_sec += time.perf_counter() - _collection_started
    generation = info["generation"]
    if generation == 0:
        COUNTERS.gc_gen0 += 1
    elif generation == 1:
        COUNTERS.gc_gen1 += 1
    else:
        COUNTERS.gc_gen2 += 1
