"""The replay's pure parts: reading dead-letter headers, filters, the headers a copy carries,
the intent stored with the replay's commits, and the command line's connection options."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faststream_concurrent_aiokafka.core.dead_letters import (
    HISTORY_PREFIX,
    REPLAYED_FROM,
    REPLAYS,
    DeadLetter,
    Origin,
    ReplayFilter,
    dead_letter_headers,
    read_dead_letter,
    replay_headers,
    replayed_from,
    replayed_place,
)
from faststream_concurrent_aiokafka.core.replay_intent import Intent, decode_intent
from faststream_concurrent_aiokafka.replay import KafkaConnection
from faststream_concurrent_aiokafka.replay import connection as replay_connection
from faststream_concurrent_aiokafka.replay.__main__ import connection_from, main, parser

ORIGINAL = [("trace", b"1"), ("raw", b"\xff"), ("trace", b"2")]


def letter_headers(error: Exception | None = None) -> list[tuple[str, bytes]]:
    origin = Origin("orders", 2, 40, 1_700_000_000_000, "billing")
    return dead_letter_headers(ORIGINAL, origin, error or KeyError("k"), 3, str)


def test_read_dead_letter_gives_the_original_place_and_error() -> None:
    assert read_dead_letter(letter_headers()) == DeadLetter("orders", 2, 40, "KeyError")


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("x-dead-letter-topic", b"orders")],
        [
            ("x-dead-letter-topic", b"o"),
            ("x-dead-letter-partition", b"x"),
            ("x-dead-letter-offset", b"1"),
        ],
    ],
    ids=["none", "partial", "not-a-number"],
)
def test_records_without_our_headers_are_no_dead_letters(headers: list[tuple[str, bytes]]) -> None:
    assert read_dead_letter(headers) is None


def test_an_empty_filter_matches_everything_even_foreign_records() -> None:
    assert ReplayFilter().matches(None)
    assert ReplayFilter().matches(DeadLetter("t", 0, 0, "E"))


@pytest.mark.parametrize(
    ("only", "matches"),
    [
        (ReplayFilter(exception_types={"KeyError"}), True),
        (ReplayFilter(exception_types={"ValueError"}), False),
        (ReplayFilter(topics={"orders"}), True),
        (ReplayFilter(topics={"payments"}), False),
        (ReplayFilter(partitions={1, 2}), True),
        (ReplayFilter(partitions={0}), False),
        (ReplayFilter(min_offset=40, max_offset=40), True),
        (ReplayFilter(min_offset=41), False),
        (ReplayFilter(max_offset=39), False),
        (ReplayFilter(exception_types={"KeyError"}, partitions={0}), False),
    ],
)
def test_a_filter_matches_on_every_field_it_has(only: ReplayFilter, matches: bool) -> None:
    letter = DeadLetter("orders", 2, 40, "KeyError")

    assert only.matches(letter) is matches
    assert only.matches(None) is False  # a foreign record matches no filter with a field


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"topics": "orders"}, "ReplayFilter.topics"),
        ({"exception_types": "ValueError"}, "ReplayFilter.exception_types"),
        ({"min_offset": 5, "max_offset": 4}, "ReplayFilter.min_offset"),
    ],
)
def test_a_filter_that_would_match_wrongly_or_never_is_refused(
    fields: dict[str, object], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        ReplayFilter(**fields)  # type: ignore[arg-type]


def test_a_copy_keeps_the_original_headers_and_moves_ours_under_history() -> None:
    marker = replayed_from("orders.dlq", 0, 7)

    headers = replay_headers(letter_headers(), marker, keep_history=True)

    assert headers[:3] == ORIGINAL
    assert headers[-2:] == [(REPLAYS, b"1"), (REPLAYED_FROM, b"orders.dlq/0/7")]
    history = dict(headers[3:-2])
    assert history[HISTORY_PREFIX + "topic"] == b"orders"
    assert history[HISTORY_PREFIX + "exception-type"] == b"KeyError"
    assert all(name.startswith(HISTORY_PREFIX) for name in history)
    assert read_dead_letter(headers) is None  # no longer reads as a dead letter


def test_a_copy_without_history_keeps_only_the_original_headers_and_the_marker() -> None:
    headers = replay_headers(letter_headers(), b"d/0/1", keep_history=False)

    assert headers == [*ORIGINAL, (REPLAYS, b"1"), (REPLAYED_FROM, b"d/0/1")]


def test_a_second_failure_and_replay_keep_the_first_history() -> None:
    first = replay_headers(letter_headers(KeyError("one")), b"dlq/0/1", keep_history=True)
    # The copy fails again and is dead-lettered again, then replayed again.
    again = dead_letter_headers(
        first, Origin("orders", 2, 99, None, "billing"), ValueError("two"), 1, str
    )
    second = replay_headers(again, b"dlq/0/5", keep_history=True)

    names = [name for name, _ in second]
    assert names.count(HISTORY_PREFIX + "exception-type") == 2
    assert [v for n, v in second if n == HISTORY_PREFIX + "exception-type"] == [
        b"KeyError",
        b"ValueError",
    ]
    # Only the latest copy's marker is a marker; the earlier one is history.
    assert [v for n, v in second if n == REPLAYED_FROM] == [b"dlq/0/5"]
    assert [v for n, v in second if n == HISTORY_PREFIX + "replayed-from"] == [b"dlq/0/1"]


topics = st.text(alphabet="abcXYZ09._-", min_size=1, max_size=40)


@given(
    upto=st.integers(0, 2**62),
    ends=st.dictionaries(
        st.tuples(topics, st.integers(0, 10_000)), st.integers(0, 2**62), max_size=20
    ),
)
def test_an_intent_reads_back_as_written(upto: int, ends: dict[tuple[str, int], int]) -> None:
    assert decode_intent(Intent(upto, ends).encode()) == Intent(upto, ends)


@pytest.mark.parametrize("metadata", ["", "fcak1:abc", "other"])
def test_metadata_without_an_intent_reads_as_none(metadata: str) -> None:
    assert decode_intent(metadata) is None


@pytest.mark.parametrize(
    "metadata", ["fcak-replay1:x:", "fcak-replay1:5:t/x=1", "fcak-replay1:5:/1=2"]
)
def test_a_damaged_intent_is_an_error_not_silence(metadata: str) -> None:
    with pytest.raises(ValueError, match="unreadable replay intent"):
        decode_intent(metadata)


# ---- the command line's connection ------------------------------------------------------------


def connection(*args: str) -> KafkaConnection:
    return connection_from(parser().parse_args(["--bootstrap", "h:1", "--from", "dlq", *args]))


def test_the_default_connection_is_plaintext() -> None:
    assert connection().client_settings() == {
        "bootstrap_servers": "h:1",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_options_become_aiokafka_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_SASL_PASSWORD", raising=False)
    settings = connection(
        "--security-protocol",
        "SASL_PLAINTEXT",
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        "u",
        "--sasl-password",
        "p",
    ).client_settings()

    assert settings == {
        "bootstrap_servers": "h:1",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }


def test_the_password_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "from-env")
    found = connection(
        "--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN", "--sasl-username", "u"
    )

    settings = found.client_settings()

    assert settings["sasl_plain_password"] == "from-env"
    assert settings["ssl_context"] is not None
    assert "from-env" not in repr(found)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--security-protocol", "SASL_PLAINTEXT"], "sasl_mechanism"),
        (["--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN"], "sasl_username"),
    ],
)
def test_incomplete_sasl_options_fail_naming_what_is_missing(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_SASL_PASSWORD", raising=False)
    with pytest.raises(ValueError, match=message):
        connection(*args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sasl-username", "u", "--sasl-password", "p"], "sasl_username, sasl_password given"),
        (["--security-protocol", "SSL", "--sasl-mechanism", "PLAIN"], "sasl_mechanism given"),
        (["--ssl-cafile", "/ca.pem"], "ssl_cafile given, but security_protocol is PLAINTEXT"),
        (["--ssl-certfile", "/c.pem"], "ssl_certfile given, but security_protocol is PLAINTEXT"),
        (["--security-protocol", "SSL", "--ssl-keyfile", "/k.pem"], "without ssl_certfile"),
    ],
)
def test_security_options_the_protocol_would_ignore_are_refused(
    args: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        connection(*args)


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--sasl-username", "u"], "sasl_username given"),
        (["--offset-from", "5", "--offset-to", "4"], "min_offset (5) is above max_offset (4)"),
        (["--max-replays", "0"], "--max-replays must be at least 1"),
        (["--to", "t", "--all-targets"], "--all-targets and --to exclude each other"),
        (["--sasl-password", "p", "--sasl-password-file", "f"], "not allowed with argument"),
        (
            [
                *("--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN"),
                *("--sasl-username", "u", "--sasl-password-file", "/nonexistent/password"),
            ],
            "cannot read --sasl-password-file '/nonexistent/password'",
        ),
    ],
)
def test_wrong_arguments_exit_with_status_2_naming_the_cause(
    args: list[str], cause: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--bootstrap", "h:1", "--from", "dlq", *args])

    assert stopped.value.code == 2
    assert cause in capsys.readouterr().err


def test_an_ssl_ca_file_is_loaded() -> None:
    with pytest.raises(FileNotFoundError):
        connection(
            "--security-protocol", "SSL", "--ssl-cafile", "/nonexistent/ca.pem"
        ).client_settings()


def test_a_client_certificate_goes_into_the_ssl_context(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict[str, object]] = []

    def create_ssl_context(**kwargs: object) -> str:
        made.append(kwargs)
        return "ctx"

    monkeypatch.setattr(replay_connection, "create_ssl_context", create_ssl_context)
    settings = connection(
        "--security-protocol", "SSL", "--ssl-certfile", "/c.pem", "--ssl-keyfile", "/k.pem"
    ).client_settings()

    assert settings["ssl_context"] == "ctx"
    assert made == [{"cafile": None, "certfile": "/c.pem", "keyfile": "/k.pem"}]


# ---- repeated failures (issue 26) ----------------------------------------------------------


def test_a_copy_that_fails_again_reads_as_a_dead_letter_replayed_once() -> None:
    first = replay_headers(letter_headers(), b"dlq/0/1", keep_history=False)
    again = dead_letter_headers(first, Origin("orders", 2, 99, None, "billing"), KeyError(), 1, str)

    assert read_dead_letter(letter_headers()).replays == 0  # type: ignore[union-attr]
    assert read_dead_letter(again) == DeadLetter("orders", 2, 99, "KeyError", replays=1)


@pytest.mark.parametrize("keep_history", [True, False])
def test_each_replay_counts_one_more_whatever_happens_to_the_history(keep_history: bool) -> None:
    headers = letter_headers()
    for count in range(1, 4):
        copy = replay_headers(
            headers, b"dlq/0/%d" % count, keep_history=keep_history, replays=count
        )
        assert [v for n, v in copy if n == REPLAYS] == [str(count).encode()]
        headers = dead_letter_headers(
            copy, Origin("orders", 2, count, None, "g"), KeyError(), 1, str
        )
        assert read_dead_letter(headers).replays == count  # type: ignore[union-attr]


def test_a_dead_letter_of_a_copy_made_before_the_count_counts_as_replayed_once() -> None:
    headers = [*letter_headers(), (REPLAYED_FROM, b"dlq/0/3")]

    assert read_dead_letter(headers).replays == 1  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("marker", "place"),
    [
        (b"orders.dlq/0/7", ("orders.dlq", 0, 7)),
        (b"a/b/3/12", ("a/b", 3, 12)),
        (b"dlq/x/1", None),
        (b"7", None),
        (b"\xff/0/1", ("\ufffd", 0, 1)),
    ],
)
def test_a_marker_names_its_dead_letter_s_place(
    marker: bytes, place: tuple[str, int, int] | None
) -> None:
    assert replayed_place(marker) == place


def test_the_sasl_password_is_read_from_a_file_and_not_shown_as_an_argument(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\nignored\n")
    sasl = ("--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN")

    found = connection(*sasl, "--sasl-username", "u", "--sasl-password-file", str(secret))

    assert found.client_settings()["sasl_plain_password"] == "s3cret"
    assert "--sasl-password-file" in parser().format_help()
    assert "process list" in parser().format_help()
