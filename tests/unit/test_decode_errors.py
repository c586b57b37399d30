"""What a validation error shows of the message in a dead letter's header and a log line:
field names and rules, never the body's values, dict keys or a validator's text (issue 26)."""

import logging

import pydantic
import pytest
from fast_depends.exceptions import ValidationError as FastDependsValidationError

from faststream_concurrent_aiokafka.core.dead_letters import (
    EXCEPTION_MESSAGE,
    Origin,
    dead_letter_headers,
)
from faststream_concurrent_aiokafka.core.decode_errors import (
    MAX_LISTED_ERRORS,
    MAX_SUMMARY_CHARS,
    describe_exception,
    quotes_input,
)
from faststream_concurrent_aiokafka.engine.attempts import log_traceback, summary

SECRET = "4111111111111111"


class Line(pydantic.BaseModel):
    quantity: int


class Checkout(pydantic.BaseModel):
    items: dict[str, Line]
    lines: list[int]
    card: str

    @pydantic.field_validator("card")
    @classmethod
    def _refuse(cls, value: str) -> str:
        msg = f"card {value} is blocked"
        raise ValueError(msg)


class HandlerError(Exception):
    """What a handler raises after catching the validation error."""


def _checkout_error() -> pydantic.ValidationError:
    body = {"items": {f"card={SECRET}": {"quantity": "x"}}, "lines": [1, "y"], "card": SECRET}
    try:
        Checkout.model_validate(body)
    except pydantic.ValidationError as error:
        assert SECRET in str(error)
        return error
    raise AssertionError


def _raised_from(error: BaseException) -> HandlerError:
    try:
        raise HandlerError(f"checkout refused: {error}") from error
    except HandlerError as wrapper:
        return wrapper


def _raised_during(error: BaseException) -> HandlerError:
    try:
        try:
            raise error
        except pydantic.ValidationError:
            raise HandlerError(f"checkout refused: {error}")  # noqa: B904 - as users write it
    except HandlerError as wrapper:
        return wrapper


def _fast_depends(error: pydantic.ValidationError) -> FastDependsValidationError:
    return FastDependsValidationError(
        incoming_options={"body": SECRET}, locations=("card",), expected={}, original_error=error
    )


ERRORS = {
    "pydantic": _checkout_error,
    "fast_depends": lambda: _fast_depends(_checkout_error()),
    "raise from": lambda: _raised_from(_checkout_error()),
    "raised while handling": lambda: _raised_during(_checkout_error()),
    "group": lambda: ExceptionGroup("batch", [RuntimeError("other"), _checkout_error()]),
    "nested group": lambda: _raised_from(
        ExceptionGroup("outer", [ExceptionGroup("inner", [_checkout_error()])])
    ),
}


def _log_text(error: BaseException) -> str:
    """The line the runner logs for a failed message, formatted as a handler would."""
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "failed: %s", (summary(error),), None
    )
    traceback = log_traceback(error)
    if traceback is not None:
        record.exc_info = (type(traceback), traceback, traceback.__traceback__)
    return logging.Formatter().format(record)


@pytest.mark.parametrize("make", ERRORS.values(), ids=ERRORS.keys())
def test_the_dead_letter_header_shows_no_content_of_the_body(make: object) -> None:
    error = make()  # type: ignore[operator]
    origin = Origin("orders", 0, 1, None, "g")

    text = dict(dead_letter_headers([], origin, error, 1, describe_exception))[EXCEPTION_MESSAGE]

    assert SECRET.encode() not in text
    assert b"blocked" not in text  # the validator's own message
    assert b"items.*.quantity" in text  # the field names, the dict key hidden
    assert b"lines[1]" in text
    assert b"card: [value_error]" in text


@pytest.mark.parametrize("make", ERRORS.values(), ids=ERRORS.keys())
def test_the_log_line_shows_no_content_of_the_body_nor_a_traceback_quoting_it(
    make: object,
) -> None:
    error = make()  # type: ignore[operator]

    line = _log_text(error)

    assert quotes_input(error)
    assert SECRET not in line
    assert "input_value" not in line
    assert "items.*.quantity" in line


def test_an_error_raised_from_a_validation_error_says_so() -> None:
    assert describe_exception(_raised_from(_checkout_error())).startswith(
        "raised from 3 validation error(s) for Checkout: "
    )


def test_an_error_unrelated_to_validation_keeps_its_text_and_traceback() -> None:
    error = _raised_from(KeyError("order 7"))

    assert describe_exception(error) == f"checkout refused: {KeyError('order 7')}"
    assert log_traceback(error) is error
    assert "Traceback" in _log_text(error)


def test_a_cycle_of_causes_ends() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__cause__, second.__cause__ = second, first

    assert not quotes_input(first)


def test_a_summary_of_many_errors_is_capped() -> None:
    class Wide(pydantic.BaseModel):
        values: list[int]

    try:
        Wide.model_validate({"values": ["x"] * 1000})
    except pydantic.ValidationError as error:
        text = describe_exception(error)

    assert len(text) <= MAX_SUMMARY_CHARS
    assert text.startswith("1000 validation error(s) for Wide: values[0]: ")
    listed = text.count("values[")
    assert 1 <= listed <= MAX_LISTED_ERRORS
    assert text.endswith(f"; and {1000 - listed} more")


def test_a_long_list_index_and_a_tagged_union_member_are_hidden() -> None:
    class Tagged(pydantic.BaseModel):
        value: int | list[int]

    try:
        Tagged.model_validate({"value": "x"})
    except pydantic.ValidationError as error:
        text = describe_exception(error)

    assert "value.*:" in text  # the union member's tag ("int", "list[int]") is not a field
