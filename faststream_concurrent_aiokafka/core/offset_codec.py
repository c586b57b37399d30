"""Compact, versioned encoding of the offsets finished above a Kafka commit point.

Messages of a partition are processed concurrently, so when offset ``C`` is committed
(everything below ``C`` is done) some offsets above ``C`` may already be finished too. They are
stored in the commit's metadata string so that the next owner of the partition can skip them.

Format (pure ASCII)::

    "fcak1:" TAG base64url-without-padding( varint(C) BODY )

``fcak`` marks metadata written by this library and ``1`` is :data:`CODEC_VERSION`. ``C`` is
repeated inside so that metadata left behind while someone else moved the committed offset is
rejected instead of being applied to the wrong offsets. BODY describes offsets ``C+1, C+2, ...``
either as a bitset (tag ``b``: bit ``i % 8`` of byte ``i // 8`` set = offset ``C+1+i`` finished)
or as alternating run lengths of unfinished and finished offsets starting at ``C+1``, the first
run possibly empty (tag ``r``). Upper-case tags (``B``, ``R``) hold the same bodies as a raw
deflate stream. Varints are unsigned LEB128. The encoder writes whichever form is shortest.

Truncation: if the whole set does not fit into ``max_bytes``, or reaches beyond ``C + 2**20``
(the most a decoder is willing to materialise), only the longest prefix that fits is stored,
i.e. every finished offset up to some bound. That is still correct: offsets left out are merely
processed again. An empty string means that nothing above ``C`` is known to be finished.
"""

import base64
import binascii
import bisect
import itertools
import re
import zlib
from collections.abc import Iterable
from typing import Final

from faststream_concurrent_aiokafka.core.offset_bitmap import OffsetBitmap

CODEC_VERSION: Final = 1
DEFAULT_MAX_METADATA_BYTES: Final = 4096
ENCODE_INLINE_MAX: Final = 256
"""Above this many finished offsets, encoding them (zlib, several tries) takes milliseconds
(about 5 ms for 512 scattered offsets, 46 ms for 8,192): callers encode in a worker thread, so
the event loop keeps serving messages and heartbeats."""

_MAGIC: Final = "fcak"
_PREFIX: Final = f"{_MAGIC}{CODEC_VERSION}:"
_HEADER: Final = re.compile(rf"{_MAGIC}([0-9]+):", re.ASCII)

_BITSET: Final = "b"
_RUNS: Final = "r"
_DEFLATED_BITSET: Final = "B"
_DEFLATED_RUNS: Final = "R"
_TAGS: Final = frozenset({_BITSET, _RUNS, _DEFLATED_BITSET, _DEFLATED_RUNS})

# Offsets further than this above the committed one are never stored, so a decoder never builds
# a set (or bitset) larger than this, whatever it is fed.
_MAX_SPAN: Final = 1 << 20
# Valid bodies inflate to at most _MAX_SPAN // 8 bytes (bitset) or _MAX_SPAN varints of at most
# 3 bytes each (runs), so this cap only ever rejects decompression bombs.
_MAX_INFLATED: Final = 4 * _MAX_SPAN

_VARINT_MAX_BYTES: Final = 10  # enough for any 64-bit Kafka offset
_VARINT_PAYLOAD_MASK: Final = 0x7F
_VARINT_CONTINUE: Final = 0x80
_ONE_BYTE_VARINTS: Final = tuple(bytes((value,)) for value in range(_VARINT_CONTINUE))
# Z_RLE (only repeats of the previous byte) is fast and the tightest for irregular sets; the
# default strategy catches periodic ones (e.g. one slow key in a round robin). Level 9 of the
# default strategy costs an order of magnitude more time on sparse bitsets for ~10% gain.
_DEFLATE_STRATEGIES: Final = (zlib.Z_RLE, zlib.Z_DEFAULT_STRATEGY)
_DEFLATE_LEVEL: Final = 6
_RAW_DEFLATE_WBITS: Final = -15  # no zlib header/checksum: six bytes we would rather spend on data
_DEFLATE_CHUNK: Final = 4096  # how often deflating checks whether it already overshot its limit

_ONES: Final = re.compile("1+")
_FINISHED_MARK: Final = ord("1")


class MetadataDecodeError(ValueError):
    """Commit metadata was not written by this codec (version), or is corrupt or stale."""


def encode_finished_offsets(
    committed: int,
    finished: Iterable[int],
    max_bytes: int = DEFAULT_MAX_METADATA_BYTES,
) -> str:
    """Encode the offsets of ``finished`` above ``committed`` into at most ``max_bytes`` bytes.

    Offsets ``<= committed`` are ignored (``committed`` itself is unfinished by definition). When
    everything does not fit, the longest fitting prefix is kept, down to ``""`` (nothing stored).
    Only a negative ``committed`` raises (ValueError): it cannot be a committed Kafka offset.
    """
    if committed < 0:
        raise ValueError(f"committed offset must be >= 0, got {committed}")
    first = committed + 1
    stop = first + _MAX_SPAN
    positions = [offset - first for offset in finished if first <= offset < stop]
    if not positions:
        return ""
    # One character per offset from committed + 1 on, so that finding runs, building the bitset
    # and so on run inside str/re/int builtins instead of Python loops over the whole range.
    marks = bytearray(b"0") * (max(positions) + 1)
    for position in positions:
        marks[position] = _FINISHED_MARK
    base = _encode_varint(committed)
    # Unpadded base64 turns n bytes into ceil(4n / 3) characters; one character goes to the tag.
    body_limit = 3 * (max_bytes - len(_PREFIX) - 1) // 4 - len(base)
    prefixes = _Prefixes(marks.decode("ascii"))

    def attempt(count: int) -> str | None:
        smallest = prefixes.smallest_body(count, body_limit)
        return None if smallest is None else _PREFIX + smallest[0] + _to_base64(base + smallest[1])

    total = prefixes.total
    whole = attempt(total)
    if whole is not None:
        return whole
    # Invariant: the first `fits` positions encode to `best`; the first `fails` do not fit.
    # Probe 1, 2, 4, ... until something does not fit, then bisect: the work follows the size of
    # the answer (bounded by max_bytes) rather than the size of the input.
    fits, fails, best = 0, total, ""
    while fails - fits > 1:
        probe = min(max(1, 2 * fits), fails - 1) if fails == total else (fits + fails) // 2
        encoded = attempt(probe)
        if encoded is None:
            fails = probe
        else:
            fits, best = probe, encoded
    return best


def decode_finished_offsets(metadata: str, committed: int) -> frozenset[int]:
    """Return the finished offsets above ``committed`` recorded in commit ``metadata``.

    ``committed`` is the offset Kafka returned with the metadata; metadata written for any other
    offset is rejected. Raises :class:`MetadataDecodeError` (and nothing else) for any metadata
    this codec did not write. Up to 2**20 ints: :func:`decode_finished_bitmap` keeps bits.
    """
    decoded = _decode_body(metadata, committed)
    if decoded is None:
        return frozenset()
    tag, body = decoded
    runs = _bitset_runs(body) if tag == _BITSET else _length_runs(body)
    first = committed + 1
    return frozenset(
        itertools.chain.from_iterable(range(first + start, first + stop) for start, stop in runs)
    )


def decode_finished_bitmap(metadata: str, committed: int) -> OffsetBitmap:
    """The same offsets as :func:`decode_finished_offsets`, as a bitmap: at most 128 KiB
    whatever the metadata claims (``_MAX_SPAN`` bits), never one int object per offset."""
    first = committed + 1
    decoded = _decode_body(metadata, committed)
    if decoded is None:
        return OffsetBitmap(first)
    tag, body = decoded
    if tag == _BITSET:
        _check_bitset(body)
        return OffsetBitmap(first, body)
    return OffsetBitmap.from_runs(first, _length_runs(body))


def _decode_body(metadata: str, committed: int) -> tuple[str, bytes] | None:
    """The body of ``metadata`` (inflated) and whether it is a bitset (``_BITSET``) or runs
    (``_RUNS``); None for empty metadata. Everything but the body itself is checked here."""
    if not metadata:
        return None
    if not metadata.startswith(_MAGIC):
        raise MetadataDecodeError(
            f"metadata {_clip(metadata)} was not written by this codec (no {_MAGIC!r} prefix)"
        )
    header = _HEADER.match(metadata)
    if header is None:
        raise MetadataDecodeError(
            f"malformed header in {_clip(metadata)}, expected {_MAGIC!r}<version>':'"
        )
    if header[1] != str(CODEC_VERSION):
        raise MetadataDecodeError(
            f"unsupported codec version {_clip(header[1])}, this codec reads {CODEC_VERSION}"
        )
    tag, text = metadata[header.end() : header.end() + 1], metadata[header.end() + 1 :]
    if tag not in _TAGS:
        raise MetadataDecodeError(f"unknown encoding tag {tag!r}")
    payload = _from_base64(text)
    stored_base, body_start = _decode_varint(payload, 0)
    if stored_base != committed:
        raise MetadataDecodeError(
            f"metadata was written for committed offset {stored_base}, "
            f"but the committed offset is {committed}"
        )
    body = payload[body_start:]
    if tag in (_DEFLATED_BITSET, _DEFLATED_RUNS):
        body = _inflate(body)
    return (_BITSET if tag in (_BITSET, _DEFLATED_BITSET) else _RUNS), body


class _Prefixes:
    """Encodes any prefix of a set of positions without redoing the O(set) work for each probe."""

    def __init__(self, bits: str) -> None:
        """``bits[i]`` is "1" if relative position ``i`` is finished, else "0"."""
        spans = [match.span() for match in _ONES.finditer(bits)]
        self._starts = [start for start, _ in spans]
        previous_stops = [0, *(stop for _, stop in spans[:-1])]
        self._gaps = [
            start - previous for start, previous in zip(self._starts, previous_stops, strict=True)
        ]
        lengths = [stop - start for start, stop in spans]
        chunks = [
            _encode_varint(gap) + _encode_varint(length)
            for gap, length in zip(self._gaps, lengths, strict=True)
        ]
        # Positions covered by runs 0..i, and where run i starts in the full runs body.
        self._covered = list(itertools.accumulate(lengths))
        self.total = self._covered[-1]
        self._chunk_offsets = [0, *itertools.accumulate(map(len, chunks))]
        self._runs_body = b"".join(chunks)
        self._bits = int(bits[::-1], 2)

    def smallest_body(self, count: int, limit: int) -> tuple[str, bytes] | None:
        """Return the shortest (tag, body) of the ``count`` lowest positions if it fits ``limit``.

        Ties go to the earliest of bitset, runs, deflated bitset, deflated runs.
        """
        run = bisect.bisect_left(self._covered, count)
        taken = count - (self._covered[run - 1] if run else 0)
        runs_body = (
            self._runs_body[: self._chunk_offsets[run]]
            + _encode_varint(self._gaps[run])
            + _encode_varint(taken)
        )
        width = self._starts[run] + taken
        bitset_body = (self._bits & ((1 << width) - 1)).to_bytes((width + 7) // 8, "little")
        best = min((_BITSET, bitset_body), (_RUNS, runs_body), key=lambda pair: len(pair[1]))
        for tag, raw in ((_DEFLATED_BITSET, bitset_body), (_DEFLATED_RUNS, runs_body)):
            for strategy in _DEFLATE_STRATEGIES:
                # Deflating is the expensive part, so give up as soon as it cannot win.
                deflated = _deflate(raw, strategy, min(limit, len(best[1]) - 1))
                if deflated is not None:
                    best = (tag, deflated)
        return best if len(best[1]) <= limit else None


def _check_bitset(body: bytes) -> None:
    if not body or body[-1] == 0:
        raise MetadataDecodeError("bitset body is empty or ends with a zero byte")
    if len(body) > _MAX_SPAN // 8:
        raise MetadataDecodeError(f"bitset covers more than {_MAX_SPAN} offsets")


def _bitset_runs(body: bytes) -> list[tuple[int, int]]:
    """Decode a bitset body into (start, stop) runs of finished relative positions."""
    _check_bitset(body)
    # bin() lists the most significant bit first; reversed, index i is position i.
    bits = bin(int.from_bytes(body, "little"))[:1:-1]
    return [match.span() for match in _ONES.finditer(bits)]


def _length_runs(body: bytes) -> list[tuple[int, int]]:
    """Decode alternating unfinished/finished run lengths into (start, stop) runs."""
    # Lengths below 128 take one byte each; then no Python loop over varints is needed.
    lengths = list(body) if body.isascii() else _decode_run_lengths(body)
    if not lengths:
        raise MetadataDecodeError("run-length body is empty")
    if 0 in lengths[1:]:
        raise MetadataDecodeError("zero-length run (only the first unfinished run may be empty)")
    if sum(lengths) > _MAX_SPAN:
        raise MetadataDecodeError(f"runs cover more than {_MAX_SPAN} offsets")
    if len(lengths) % 2:
        raise MetadataDecodeError("run lengths end with an unfinished run")
    bounds = list(itertools.accumulate(lengths))
    return list(zip(bounds[::2], bounds[1::2], strict=True))


def _decode_run_lengths(body: bytes) -> list[int]:
    """Decode varints, stopping as soon as they cannot be valid (``_length_runs`` says why)."""
    lengths: list[int] = []
    index = total = 0
    while index < len(body):
        length, index = _decode_varint(body, index)
        lengths.append(length)
        total += length
        if total > _MAX_SPAN or (length == 0 and len(lengths) > 1):
            break
    return lengths


def _encode_varint(value: int) -> bytes:
    if value <= _VARINT_PAYLOAD_MASK:
        return _ONE_BYTE_VARINTS[value]  # the common case, worth a shortcut for big inputs
    out = bytearray()
    while value > _VARINT_PAYLOAD_MASK:
        out.append(value & _VARINT_PAYLOAD_MASK | _VARINT_CONTINUE)
        value >>= 7
    out.append(value)
    return bytes(out)


def _decode_varint(data: bytes, index: int) -> tuple[int, int]:
    """Return the varint at ``data[index:]`` and the index after it; only minimal forms pass."""
    value = 0
    for shift in range(0, 7 * _VARINT_MAX_BYTES, 7):
        if index >= len(data):
            raise MetadataDecodeError("truncated varint")
        byte = data[index]
        index += 1
        value |= (byte & _VARINT_PAYLOAD_MASK) << shift
        if byte < _VARINT_CONTINUE:
            if byte == 0 and shift:
                raise MetadataDecodeError("varint is not minimally encoded")
            return value, index
    raise MetadataDecodeError(f"varint longer than {_VARINT_MAX_BYTES} bytes")


def _deflate(data: bytes, strategy: int, limit: int) -> bytes | None:
    """Deflate ``data``, or return None once the result is known to exceed ``limit`` bytes."""
    deflater = zlib.compressobj(
        _DEFLATE_LEVEL, zlib.DEFLATED, _RAW_DEFLATE_WBITS, zlib.DEF_MEM_LEVEL + 1, strategy
    )
    out = bytearray()
    view = memoryview(data)
    for start in range(0, len(data), _DEFLATE_CHUNK):
        out += deflater.compress(view[start : start + _DEFLATE_CHUNK])
        if len(out) > limit:
            return None
    out += deflater.flush()
    return bytes(out) if len(out) <= limit else None


def _inflate(data: bytes) -> bytes:
    """Inflate a raw deflate stream, refusing to produce more than ``_MAX_INFLATED`` bytes."""
    inflater = zlib.decompressobj(wbits=_RAW_DEFLATE_WBITS)
    try:
        body = inflater.decompress(data, _MAX_INFLATED + 1)
    except zlib.error as exc:
        raise MetadataDecodeError(f"corrupt deflate stream: {exc}") from exc
    if len(body) > _MAX_INFLATED:
        raise MetadataDecodeError(f"deflated body inflates beyond {_MAX_INFLATED} bytes")
    if not inflater.eof:
        raise MetadataDecodeError("truncated deflate stream")
    if inflater.unused_data:
        raise MetadataDecodeError("trailing bytes after the deflate stream")
    return body


def _to_base64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _from_base64(text: str) -> bytes:
    """Decode unpadded urlsafe base64, accepting only the exact text ``_to_base64`` writes."""
    if not text.isascii():
        raise MetadataDecodeError("payload is not ASCII")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise MetadataDecodeError(f"payload is not valid base64: {exc}") from exc
    if _to_base64(data) != text:
        raise MetadataDecodeError("payload is not canonical unpadded urlsafe base64")
    return data


def _clip(text: str, limit: int = 40) -> str:
    """repr() of at most ``limit`` characters, so errors stay readable for huge input."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
