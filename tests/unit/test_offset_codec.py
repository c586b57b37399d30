"""Tests for the commit-metadata codec of finished offsets (offset_codec).

The reference encoders below are deliberately naive re-statements of the documented format, so
that the tests check the format itself and not just that encode and decode agree with each other.
"""

import base64
import random
import tracemalloc
import zlib
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faststream_concurrent_aiokafka.core.offset_codec import (
    _DEFLATE_STRATEGIES,
    _MAX_INFLATED,
    _MAX_SPAN,
    CODEC_VERSION,
    DEFAULT_MAX_METADATA_BYTES,
    MetadataDecodeError,
    _deflate,
    decode_finished_bitmap,
    decode_finished_offsets,
    encode_finished_offsets,
)

PREFIX = "fcak1:"
TAG_ORDER = "brBR"  # tie-break order of the encoder: raw before deflated, bitset before runs


# --- naive reference implementation of the format -------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def ref_bitset(positions: set[int]) -> bytes:
    out = bytearray((max(positions) + 8) // 8)
    for position in positions:
        out[position // 8] |= 1 << (position % 8)
    return bytes(out)


def ref_runs(positions: set[int]) -> bytes:
    out = bytearray()
    cursor = 0
    ordered = sorted(positions)
    index = 0
    while index < len(ordered):
        end = index
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        out += varint(ordered[index] - cursor) + varint(end - index + 1)
        cursor = ordered[end] + 1
        index = end + 1
    return bytes(out)


def ref_deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    return deflater.compress(data) + deflater.flush()


def metadata(tag: str, committed: int, body: bytes) -> str:
    payload = base64.urlsafe_b64encode(varint(committed) + body).decode("ascii").rstrip("=")
    return PREFIX + tag + payload


def split(encoded: str) -> tuple[str, bytes]:
    """Return (tag, payload) of encoder output, checking the envelope on the way."""
    assert encoded.startswith(PREFIX)
    text = encoded[len(PREFIX) + 1 :]
    assert "=" not in text
    return encoded[len(PREFIX)], base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def offsets(committed: int, positions: Iterable[int]) -> set[int]:
    return {committed + 1 + position for position in positions}


def assert_is_maximal_prefix(
    committed: int, finished: set[int], max_bytes: int, decoded: frozenset[int]
) -> None:
    """``decoded`` is all of ``finished`` up to some bound, and one more offset would not fit."""
    ordered = sorted(finished)
    kept = len(decoded)
    assert decoded == set(ordered[:kept])
    if kept < len(ordered):
        one_more = set(ordered[: kept + 1])
        bigger = encode_finished_offsets(committed, one_more, max_bytes)
        assert decode_finished_offsets(bigger, committed) != one_more


# --- strategies -------------------------------------------------------------------------------


def from_bitmap(data: bytes) -> set[int]:
    return {bit for bit in range(len(data) * 8) if data[bit // 8] >> (bit % 8) & 1}


def from_runs(runs: list[tuple[int, int]]) -> set[int]:
    out: set[int] = set()
    cursor = 0
    for gap, length in runs:
        out.update(range(cursor + gap, cursor + gap + length))
        cursor += gap + length
    return out


def periodic(period: int, phase: int, width: int) -> set[int]:
    return set(range(phase % period, width, period))


# Per-example wall-clock deadlines only make a loaded CI machine flaky; nothing here waits.
no_deadline = settings(deadline=None)

committeds = st.integers(0, 2**40)
# Positions relative to committed + 1, i.e. offsets committed+1 .. committed+5000.
near = st.one_of(
    st.sets(st.integers(0, 4999), max_size=300),
    st.binary(max_size=625).map(from_bitmap),
    # at most 60 * (40 + 40) = 4800 wide
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 40)), max_size=60).map(from_runs),
    st.builds(periodic, st.integers(1, 20), st.integers(0, 19), st.integers(1, 5000)),
)
sparse_wide = st.sets(st.integers(0, _MAX_SPAN - 1), max_size=100)
# Big enough to overflow 4096 bytes, to exercise truncation.
big = st.one_of(
    st.binary(max_size=6000).map(from_bitmap),
    st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 300)), max_size=400).map(from_runs),
    st.builds(periodic, st.integers(1, 9), st.integers(0, 8), st.integers(1, 200_000)),
    st.sets(st.integers(0, 2**22), max_size=500),
)


# --- behaviour --------------------------------------------------------------------------------


def test_public_constants() -> None:
    assert CODEC_VERSION == 1
    assert DEFAULT_MAX_METADATA_BYTES == 4096
    assert issubclass(MetadataDecodeError, ValueError)


@pytest.mark.parametrize(
    ("committed", "finished", "expected"),
    [
        # positions 0, 1, 3 -> bitset 0b1011; payload 0x64 0x0b
        (100, {101, 102, 104}, "fcak1:bZAs"),
        # one run of 1000 from committed + 1 -> runs 0, 1000; payload 0x00 0x00 0xe8 0x07
        (0, range(1, 1001), "fcak1:rAADoBw"),
        # position 8: bitset 0x00 0x01 and runs 8, 1 tie at two bytes; the bitset wins
        (0, {9}, "fcak1:bAAAB"),
    ],
)
def test_known_encodings(committed: int, finished: Iterable[int], expected: str) -> None:
    assert encode_finished_offsets(committed, finished) == expected
    assert decode_finished_offsets(expected, committed) == frozenset(finished)


def test_nothing_finished_is_empty_metadata() -> None:
    assert encode_finished_offsets(10, []) == ""
    # committed itself is unfinished by definition; lower offsets are already covered
    assert encode_finished_offsets(10, [10, 9, 0]) == ""
    assert decode_finished_offsets("", 10) == frozenset()
    assert decode_finished_offsets("", 0) == frozenset()


def test_accepts_any_iterable_with_duplicates() -> None:
    encoded = encode_finished_offsets(5, (offset for offset in [9, 7, 7, 5, 9, 8]))
    assert decode_finished_offsets(encoded, 5) == {7, 8, 9}


def test_negative_committed_is_rejected() -> None:
    with pytest.raises(ValueError, match="committed offset must be >= 0"):
        encode_finished_offsets(-1, [3])


@no_deadline
@given(committed=committeds, positions=near, ignored=st.sets(st.integers(-1000, 0), max_size=5))
def test_round_trip_near(committed: int, positions: set[int], ignored: set[int]) -> None:
    finished = offsets(committed, positions)
    noise = {committed + delta for delta in ignored}  # committed itself and below: ignored
    encoded = encode_finished_offsets(committed, finished | noise)
    assert encoded.isascii()
    assert len(encoded) <= DEFAULT_MAX_METADATA_BYTES
    assert decode_finished_offsets(encoded, committed) == finished


@no_deadline
@given(committed=committeds, positions=sparse_wide)
def test_round_trip_sparse_wide(committed: int, positions: set[int]) -> None:
    finished = offsets(committed, positions)
    encoded = encode_finished_offsets(committed, finished)
    assert decode_finished_offsets(encoded, committed) == finished


@no_deadline
@given(committed=committeds, positions=st.sets(st.integers(0, 2**40), max_size=50))
def test_offsets_beyond_the_span_are_dropped(committed: int, positions: set[int]) -> None:
    encoded = encode_finished_offsets(committed, offsets(committed, positions))
    kept = {position for position in positions if position < _MAX_SPAN}
    assert decode_finished_offsets(encoded, committed) == offsets(committed, kept)


def test_span_boundary() -> None:
    last_kept, first_dropped = _MAX_SPAN, _MAX_SPAN + 1
    encoded = encode_finished_offsets(0, [1, last_kept, first_dropped])
    assert decode_finished_offsets(encoded, 0) == {1, last_kept}


@settings(max_examples=200, deadline=None)
@given(committed=committeds, positions=st.one_of(near, big), max_bytes=st.integers(0, 4096))
def test_size_bound_and_maximal_prefix(committed: int, positions: set[int], max_bytes: int) -> None:
    finished = offsets(committed, positions)
    encoded = encode_finished_offsets(committed, finished, max_bytes)
    assert len(encoded.encode()) <= max_bytes
    decoded = decode_finished_offsets(encoded, committed)
    reachable = {offset for offset in finished if offset <= committed + _MAX_SPAN}
    assert_is_maximal_prefix(committed, reachable, max_bytes, decoded)


def deflated_size(body: bytes) -> int:
    """Size of the best deflate stream the encoder can produce for ``body``."""
    sizes = []
    for strategy in _DEFLATE_STRATEGIES:
        deflated = _deflate(body, strategy, 2 * len(body) + 64)  # a limit it never reaches
        assert deflated is not None
        assert zlib.decompress(deflated, wbits=-15) == body
        sizes.append(len(deflated))
    return min(sizes)


@no_deadline
@given(committed=committeds, positions=st.one_of(near, sparse_wide).filter(bool))
def test_picks_the_smallest_encoding(committed: int, positions: set[int]) -> None:
    raw = {"b": ref_bitset(positions), "r": ref_runs(positions)}
    sizes = {tag: len(body) for tag, body in raw.items()}
    sizes |= {"B": deflated_size(raw["b"]), "R": deflated_size(raw["r"])}
    tag, payload = split(encode_finished_offsets(committed, offsets(committed, positions)))
    smallest = min(sizes.values())
    assert len(payload) == len(varint(committed)) + smallest
    assert tag == next(candidate for candidate in TAG_ORDER if sizes[candidate] == smallest)
    if tag in "br":
        assert payload == varint(committed) + raw[tag]


@no_deadline
@given(committed=committeds, positions=st.one_of(near, sparse_wide).filter(bool))
def test_decodes_every_tag(committed: int, positions: set[int]) -> None:
    bodies = {"b": ref_bitset(positions), "r": ref_runs(positions)}
    bodies |= {"B": ref_deflate(bodies["b"]), "R": ref_deflate(bodies["r"])}
    for tag, body in bodies.items():
        text = metadata(tag, committed, body)
        decoded = decode_finished_offsets(text, committed)
        assert decoded == offsets(committed, positions), tag
        assert set(decode_finished_bitmap(text, committed)) == decoded, tag


def test_decoder_accepts_the_largest_valid_bodies() -> None:
    """The decoder's safety limits must not reject anything the encoder may write."""
    everything = range(_MAX_SPAN)
    every_other = range(0, _MAX_SPAN, 2)
    # Built directly: the reference encoders are too slow for a million positions.
    full_bitset = b"\xff" * (_MAX_SPAN // 8)
    alternating_bitset = b"\x55" * (_MAX_SPAN // 8)
    alternating_runs = b"\x00\x01" + b"\x01\x01" * (_MAX_SPAN // 2 - 1)  # the most runs
    for tag, body, expected in [
        ("B", ref_deflate(full_bitset), everything),
        ("b", alternating_bitset, every_other),
        ("R", ref_deflate(alternating_runs), every_other),
        ("r", varint(_MAX_SPAN - 1) + b"\x01", [_MAX_SPAN - 1]),  # the furthest position
    ]:
        text = metadata(tag, 7, body)
        assert decode_finished_offsets(text, 7) == offsets(7, expected), tag
        bitmap = decode_finished_bitmap(text, 7)
        assert len(bitmap) == len(expected), tag
        assert bitmap.nbytes <= _MAX_SPAN // 8, tag


def test_a_claim_of_the_whole_span_takes_bits_not_ints() -> None:
    """A 14-character claim of 2**20 offsets: as a set of ints some 64 MiB, as bits 128 KiB
    (what stays allocated after the decoding, measured by tracemalloc)."""
    claim = encode_finished_offsets(5, range(6, 6 + _MAX_SPAN))
    assert len(claim) <= 20
    tracemalloc.start()
    try:
        bitmap = decode_finished_bitmap(claim, 5)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(bitmap) == _MAX_SPAN
    assert (bitmap.first, bitmap.last) == (6, 5 + _MAX_SPAN)
    assert held < 1 << 20, held


@pytest.mark.parametrize(
    ("committed", "finished", "max_bytes", "exact"),
    [
        (10**12, range(10**12 + 1, 10**12 + 4001), 4096, True),  # dense 4000
        (10**12, range(10**12 + 1, 10**12 + 8001, 2), 4096, True),  # 1 in 2, 4000 finished
        (7, range(8, 200_008, 2), 4096, True),  # 1 in 2, 100k finished: deflates well
        (7, range(8, 200_008, 2), 40, False),  # ... but not into 40 bytes
        (0, random.Random(3).sample(range(1, 64_001), 32_000), 4096, False),  # random half
    ],
)
def test_worst_cases_fit_or_degrade_to_a_prefix(
    committed: int, finished: Iterable[int], max_bytes: int, exact: bool
) -> None:
    wanted = set(finished)
    encoded = encode_finished_offsets(committed, wanted, max_bytes)
    assert len(encoded) <= max_bytes
    decoded = decode_finished_offsets(encoded, committed)
    assert (decoded == wanted) is exact
    assert decoded
    assert_is_maximal_prefix(committed, wanted, max_bytes, decoded)


def test_alternating_4000_in_a_random_window() -> None:
    # the "1 in 2" pattern but irregular: neither runs nor deflate get any help from periodicity
    rng = random.Random(5)
    finished = {1 + 2 * slot + rng.randrange(2) for slot in range(4000)}
    encoded = encode_finished_offsets(0, finished)
    assert len(encoded) <= 4096
    assert decode_finished_offsets(encoded, 0) == finished


def test_large_sparse_input_degrades_to_a_prefix() -> None:
    committed = 5 * 10**9
    rng = random.Random(7)
    finished = [committed + 1 + position for position in rng.sample(range(10_000_000), 100_000)]
    encoded = encode_finished_offsets(committed, finished)
    assert len(encoded) <= 4096
    decoded = decode_finished_offsets(encoded, committed)
    assert len(decoded) > 1000
    assert_is_maximal_prefix(committed, set(finished), 4096, decoded)


# --- rejection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # "fcak1:bZAs" would be {101, 102, 104} above committed 100
        ("hello", "not written by this codec"),
        ('{"consumer": "x"}', "not written by this codec"),
        ("fca1:bZAs", "not written by this codec"),
        ("FCAK1:bZAs", "not written by this codec"),
        (" fcak1:bZAs", "not written by this codec"),
        ("fcak:bZAs", "malformed header"),
        ("fcakv1:bZAs", "malformed header"),
        ("fcak1", "malformed header"),
        ("fcak2:bZAs", "unsupported codec version '2'"),
        ("fcak01:bZAs", "unsupported codec version '01'"),
        ("fcak" + "9" * 5000 + ":bZAs", "unsupported codec version"),
        ("fcak1:", "unknown encoding tag ''"),
        ("fcak1:xZAs", "unknown encoding tag 'x'"),
        ("fcak1:ZAs", "unknown encoding tag 'Z'"),
        ("fcak1:b", "truncated varint"),
        ("fcak1:bZ", "not valid base64"),
        ("fcak1:bZA$", "base64"),
        ("fcak1:bZA s", "base64"),
        ("fcak1:bZAt", "not canonical"),  # same bytes as ZAs, non-zero padding bits
        ("fcak1:bZAs=", "not canonical"),
        ("fcak1:bZAé", "not ASCII"),
    ],
)
def test_rejects_foreign_or_corrupt_text(text: str, reason: str) -> None:
    with pytest.raises(MetadataDecodeError, match=reason):
        decode_finished_offsets(text, 100)


@pytest.mark.parametrize(
    ("tag", "payload", "reason"),
    [
        ("b", b"\x80", "truncated varint"),
        ("b", b"\xe4\x00\x0b", "not minimally encoded"),
        ("b", b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        ("b", varint(100), "bitset body is empty"),
        ("b", varint(100) + b"\x0b\x00", "ends with a zero byte"),
        ("b", varint(100) + b"\x00" * (_MAX_SPAN // 8) + b"\x01", "covers more than"),
        ("r", varint(100), "run-length body is empty"),
        ("r", varint(100) + b"\x00\x02\x01", "end with an unfinished run"),
        ("r", varint(100) + b"\x00\x00", "zero-length run"),
        ("r", varint(100) + b"\x00\x01\x00\x01", "zero-length run"),
        ("r", varint(100) + b"\x00" + varint(_MAX_SPAN + 1), "cover more than"),
        ("r", varint(100) + b"\x00\x01" + varint(2**62) + b"\x01", "cover more than"),
        ("r", varint(100) + b"\x00\x80", "truncated varint"),
        ("B", varint(100), "truncated deflate stream"),
        ("B", varint(100) + b"\xff\xff\xff", "corrupt deflate stream"),
        ("B", varint(100) + ref_deflate(b"\x0b" * 300)[:-1], "deflate"),
        ("B", varint(100) + ref_deflate(b"\x0b") + b"\x00", "trailing bytes"),
        ("R", varint(100) + ref_deflate(b"\x01" * (_MAX_INFLATED + 1)), "inflates beyond"),
        ("R", varint(100) + ref_deflate(b""), "run-length body is empty"),
    ],
)
def test_rejects_corrupt_payloads(tag: str, payload: bytes, reason: str) -> None:
    text = PREFIX + tag + base64.urlsafe_b64encode(payload).decode("ascii").rstrip("=")
    with pytest.raises(MetadataDecodeError, match=reason):
        decode_finished_offsets(text, 100)


def test_rejects_a_decompression_bomb() -> None:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(_MAX_INFLATED)
    stream = b"".join(deflater.compress(zeros) for _ in range(16)) + deflater.flush()
    bomb = metadata("B", 3, stream)  # inflates to 16 times the limit
    with pytest.raises(MetadataDecodeError, match="inflates beyond"):
        decode_finished_offsets(bomb, 3)


@no_deadline
@given(committed=committeds, positions=near.filter(bool), delta=st.integers(1, 2**41))
def test_rejects_metadata_for_another_committed_offset(
    committed: int, positions: set[int], delta: int
) -> None:
    encoded = encode_finished_offsets(committed, offsets(committed, positions))
    for other in (committed + delta, committed - delta):
        with pytest.raises(MetadataDecodeError, match=f"written for committed offset {committed}"):
            decode_finished_offsets(encoded, other)


def assert_decodes_or_rejects(text: str, committed: int) -> None:
    """Anything other than MetadataDecodeError escaping from here fails the test, and so does
    a bitmap decoding that disagrees with the set decoding (refusing, or reading other
    offsets)."""
    try:
        decoded = decode_finished_offsets(text, committed)
    except MetadataDecodeError:
        with pytest.raises(MetadataDecodeError):
            decode_finished_bitmap(text, committed)
        return
    assert not decoded or committed < min(decoded) <= max(decoded) <= committed + _MAX_SPAN
    assert set(decode_finished_bitmap(text, committed)) == decoded


@settings(max_examples=500, deadline=None)
@given(text=st.text(), committed=st.integers(-2, 2**63))
def test_arbitrary_text_only_raises_decode_error(text: str, committed: int) -> None:
    assert_decodes_or_rejects(text, committed)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/"),
    tag=st.sampled_from("bBrRx"),
    committed=st.integers(0, 200),
)
def test_arbitrary_payload_text_only_raises_decode_error(
    text: str, tag: str, committed: int
) -> None:
    assert_decodes_or_rejects(PREFIX + tag + text, committed)


@settings(max_examples=500, deadline=None)
@given(
    body=st.binary(max_size=64),
    tag=st.sampled_from("bBrR"),
    deflated=st.booleans(),
    committed=committeds,
)
def test_arbitrary_bodies_only_raise_decode_error(
    body: bytes, tag: str, deflated: bool, committed: int
) -> None:
    assert_decodes_or_rejects(
        metadata(tag, committed, ref_deflate(body) if deflated else body), committed
    )


@no_deadline
@given(
    committed=committeds,
    positions=near.filter(bool),
    index=st.integers(0, 10_000),
    replacement=st.characters(codec="ascii"),
)
def test_mutated_metadata_only_raises_decode_error(
    committed: int, positions: set[int], index: int, replacement: str
) -> None:
    encoded = encode_finished_offsets(committed, offsets(committed, positions))
    index %= len(encoded)
    assert_decodes_or_rejects(encoded[:index] + replacement + encoded[index + 1 :], committed)
    assert_decodes_or_rejects(encoded[:index], committed)
