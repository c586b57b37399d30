"""A set of offsets kept as a bitmap: one bit per offset, never one object per offset.

Pure: no I/O. What commit metadata says an earlier owner finished may span 2**20 offsets; as a
set of ints that is some 64 MiB per partition, as bits it is at most 128 KiB, and asking
whether an offset is in it costs the same.
"""

import itertools
import re
from collections.abc import Iterable, Iterator, Set
from typing import Final

_ONES: Final = re.compile("1+")


class OffsetBitmap(Set[int]):
    """Offsets ``first + i`` for every bit ``i`` set in ``bits`` (bit ``i % 8`` of byte
    ``i // 8``, the codec's bitset layout). Immutable."""

    __slots__ = ("_bits", "_count", "_first")

    def __init__(self, first: int, bits: bytes = b"") -> None:
        self._first = first
        self._bits = bits.rstrip(b"\0")
        self._count = int.from_bytes(self._bits, "little").bit_count()

    @classmethod
    def from_runs(cls, first: int, runs: Iterable[tuple[int, int]]) -> "OffsetBitmap":
        """Offsets ``first + i`` for ``start <= i < stop`` of each (start, stop) run."""
        marks = bytearray()
        for start, stop in runs:
            if start > len(marks):
                marks += b"0" * (start - len(marks))
            marks[start:stop] = b"1" * (stop - start)
        if not marks:
            return cls(first)
        value = int(marks[::-1].decode("ascii"), 2)
        return cls(first, value.to_bytes((len(marks) + 7) // 8, "little"))

    @classmethod
    def _from_iterable(cls, it: Iterable[int]) -> frozenset[int]:  # type: ignore[override]
        """What set operations with another set make: a plain frozenset."""
        return frozenset(it)

    @property
    def first(self) -> int | None:
        """The lowest offset in the set (None when empty)."""
        return next(iter(self), None)

    @property
    def last(self) -> int | None:
        """The highest offset in the set (None when empty)."""
        if not self._bits:
            return None
        return self._first + 8 * (len(self._bits) - 1) + self._bits[-1].bit_length() - 1

    @property
    def nbytes(self) -> int:
        """Bytes the bits take."""
        return len(self._bits)

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        index = offset - self._first
        if index < 0 or index >= 8 * len(self._bits):
            return False
        return bool(self._bits[index >> 3] >> (index & 7) & 1)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        return itertools.chain.from_iterable(range(start, stop) for start, stop in self.runs())

    def runs(self) -> Iterator[tuple[int, int]]:
        """The offsets as (start, stop) runs, lowest first."""
        first = self._first
        # bin() lists the most significant bit first; reversed, index i is bit i.
        bits = bin(int.from_bytes(self._bits, "little"))[:1:-1] if self._bits else ""
        for match in _ONES.finditer(bits):
            start, stop = match.span()
            yield first + start, first + stop

    def below(self, end: int) -> "OffsetBitmap":
        """The offsets of this set below ``end``."""
        width = end - self._first
        if width >= 8 * len(self._bits):
            return self
        if width <= 0:
            return OffsetBitmap(self._first)
        kept = bytearray(self._bits[: (width + 7) // 8])
        if width % 8:
            kept[-1] &= (1 << (width % 8)) - 1
        return OffsetBitmap(self._first, bytes(kept))

    def at_or_above(self, start: int) -> "OffsetBitmap":
        """The offsets of this set from ``start`` on."""
        shift = start - self._first
        if shift <= 0:
            return self
        value = int.from_bytes(self._bits, "little") >> shift
        return OffsetBitmap(start, value.to_bytes((value.bit_length() + 7) // 8, "little"))

    def __repr__(self) -> str:
        return f"OffsetBitmap({len(self)} offsets from {self.first} to {self.last})"
