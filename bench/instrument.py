"""Counters the benchmark reads without touching the library's files.

Installed only inside a worker process, by wrapping two methods at class level:

* ``aiokafka.consumer.fetcher.Fetcher._proc_fetch_request``: one call per fetch request sent.
* ``aiokafka.consumer.fetcher.PartitionRecords.__init__``: one per partition in a fetch
  response that carried records; adds up the record bytes received.
* ``ConsumerLane.pause``: counted when a consumer goes from running to paused (backpressure).

The wrappers cost one Python call per fetch or pause, nothing per message.
"""

from dataclasses import dataclass
from typing import Any

from aiokafka.consumer.fetcher import Fetcher, PartitionRecords

from faststream_concurrent_aiokafka.lane import ConsumerLane


@dataclass
class Counters:
    fetch_requests: int = 0
    fetched_bytes: int = 0
    pauses: int = 0


COUNTERS = Counters()
_installed = False


def install() -> Counters:
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

    pause = ConsumerLane.pause

    def counted_pause(self: ConsumerLane) -> None:
        if not self.paused:
            COUNTERS.pauses += 1
        pause(self)

    ConsumerLane.pause = counted_pause  # type: ignore[method-assign]
    return COUNTERS
