"""Offset bookkeeping of one partition: which offset may be committed next.

Pure: no I/O. Kafka's committed offset means "everything below it is done", so it may only
move up to the first message that is not finished yet. Messages finished above that point
are remembered until the gap below them closes.
"""

from collections import deque
from collections.abc import Hashable, MutableMapping, Set
from typing import Any

# A batch commit whose point did not move is sent once the finished offsets above the point
# grew by 1 / METADATA_GROWTH of their number (see ``PartitionOffsets.metadata_grew``): the
# encoding then costs METADATA_GROWTH times ~0.07 us per message (about 1 us), and a crash
# runs again at most that share of them (the interval's commit sends any change).
METADATA_GROWTH = 16


class PartitionOffsets:
    """Tracks dispatched offsets of one partition in one assignment generation.

    ``retired`` is set when the partition is revoked: late completions then update a tracker
    nobody commits from, so they can never move a newer owner's commit point.
    ``already_done`` holds offsets an earlier owner finished (read from commit metadata; an
    ``OffsetBitmap`` for the at-least-once mode, whose claims may span 2**20 offsets).
    """

    __slots__ = (
        "_blocked",
        "_changes",
        "_finished",
        "_key",
        "_passed_end",
        "_pending",
        "already_done",
        "committed",
        "committed_left_out",
        "committed_version",
        "listed",
        "retired",
        "skipped",
        "version",
    )

    def __init__(self, already_done: Set[int] = frozenset()) -> None:
        self._pending: deque[int] = deque()
        self._finished: set[int] = set()
        self._blocked: set[int] = set()
        # One past the last offset the commit point passed; None before any.
        self._passed_end: int | None = None
        self.committed: int | None = None
        self.retired = False
        self.already_done = already_done
        # Bumped by every finish (and block); committed_version is its value when the last
        # commit Kafka acknowledged was taken.
        self.version = 0
        self.committed_version = 0
        # Finished above that commit's point but left out of its metadata: they run again.
        self.committed_left_out = 0
        self.skipped = 0  # finished by an earlier owner (``skip``), not run here
        # Where the tracker lists itself (under ``_key``) on its first change after the lane
        # last took the list: a commit tick then looks at the partitions that changed only,
        # not at every assigned one (see ``listen``).
        self._changes: MutableMapping[Any, PartitionOffsets] | None = None
        self._key: Hashable = None
        self.listed = False

    def listen(self, changes: "MutableMapping[Any, PartitionOffsets]", key: Hashable) -> None:
        """List this tracker in ``changes`` under ``key`` whenever something finishes or is
        blocked while it is not listed there (the taker sets ``listed`` back to False)."""
        self._changes, self._key = changes, key
        self.listed = False
        self.mark_changed()

    def mark_changed(self) -> None:
        """List the tracker as changed (once until the taker unlists it). A retired tracker
        lists nothing: its partition's key may name a newer tracker already."""
        self.listed = True
        if self._changes is not None and not self.retired:
            self._changes[self._key] = self

    @property
    def pending_count(self) -> int:
        """Dispatched messages the commit point has not passed yet."""
        return len(self._pending)

    @property
    def finished_count(self) -> int:
        """Messages finished above the commit point, waiting for an earlier one to end."""
        return len(self._finished)

    @property
    def commit_point(self) -> int | None:
        """The offset to commit: the first tracked offset not finished (or one past the last
        finished when none is left), None before any was tracked."""
        return self._pending[0] if self._pending else self._passed_end

    @property
    def needs_commit(self) -> bool:
        """The commit point moved since the last commit (or was never committed)."""
        point = self.commit_point
        return point is not None and point != self.committed

    @property
    def changed_since_commit(self) -> bool:
        """Something finished or was blocked since the last commit: its metadata is stale."""
        return self.version != self.committed_version

    @property
    def metadata_grew(self) -> bool:
        """Since the last commit, the offsets finished above the commit point grew by at least
        1 / ``METADATA_GROWTH`` of their number: while a slow message holds the point,
        re-sending the whole set (encoded anew each time, O(set)) only then keeps its cost
        linear in the messages, where one commit per batch made it quadratic."""
        fresh = self.version - self.committed_version
        return fresh > 0 and fresh * METADATA_GROWTH >= len(self._finished)

    def track(self, offset: int) -> bool:
        """Record a dispatched offset; False if it is tracked already (delivered again while
        its message has not been passed by the commit point). Offsets normally arrive in
        increasing order."""
        pending = self._pending
        if not pending or offset > pending[-1]:
            pending.append(offset)
            return True
        if offset in pending:
            return False
        # A seek moved the consumer back: keep the queue sorted, rare enough to be slow here.
        self._pending = deque(sorted((*pending, offset)))
        return True

    def finish(self, offset: int) -> int:
        """Mark an offset done; returns how many offsets the commit point passed."""
        if offset in self._blocked:
            return 0
        self.version += 1
        if not self.listed:
            self.mark_changed()
        pending = self._pending
        if not pending or pending[0] != offset:
            if pending and offset > pending[0]:
                self._finished.add(offset)
            return 0
        pending.popleft()
        passed = 1
        finished = self._finished
        last = offset
        while pending and pending[0] in finished:
            last = pending.popleft()
            finished.remove(last)
            passed += 1
        self._passed_end = last + 1
        return passed

    def skip(self, offset: int) -> int:
        """An earlier owner finished this offset (commit metadata says so): track it as done
        without running it; returns how many offsets the commit point passed."""
        self.track(offset)
        self.skipped += 1
        return self.finish(offset)

    def not_committed(self, running: int) -> int:
        """What a crash now would run again, given the ``running`` messages: those, and every
        message finished since the last commit Kafka acknowledged was taken, plus those finished
        above its point that its metadata left out. Offsets an earlier owner finished count
        only once a commit of this tracker moved past the metadata that said so (a crash
        before that skips them again). A message cancelled before that commit is left out."""
        finished = self.version - self.committed_version
        if self.committed is None:
            finished -= self.skipped
        return running + finished + self.committed_left_out

    def block(self, offset: int) -> None:
        """Never let the commit point pass this offset (its message was cancelled)."""
        if offset in self._pending:
            self._blocked.add(offset)
            self._finished.discard(offset)
            self.version += 1
            if not self.listed:
                self.mark_changed()

    def finished_above(self) -> frozenset[int]:
        """Offsets already done above the first unfinished one."""
        return frozenset(self._finished)
