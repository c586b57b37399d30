"""FastStream's decoding and validation errors, and how to describe an exception without
quoting the message it failed on.

Pure: no I/O. These are the errors FastStream raises for a body it cannot turn into the
handler's arguments; retrying such a message fails the same way, so they are the default of
``no_retry_on``. Which ones, found by running FastStream 0.7 on undecodable bodies:

- ``pydantic.ValidationError``: the body does not fit the handler's annotation (FastStream's
  default serializer raises pydantic's own error);
- ``fast_depends.exceptions.ValidationError``: the same with a serializer that wraps it
  (msgspec, or pydantic with FastDepends' errors);
- ``json.JSONDecodeError``: a body sent as ``application/json`` that is not JSON (orjson's
  error is a subclass);
- ``UnicodeDecodeError``: a body sent as ``text/plain`` that is not UTF-8.

The two validation libraries are pure Python data classes, no framework: FastStream depends on
both, and naming them here keeps the settings table's default in the table.
"""

import json
from typing import Any, Final

import pydantic
from fast_depends.exceptions import ValidationError as FastDependsValidationError

DECODE_ERRORS: Final[tuple[type[Exception], ...]] = (
    pydantic.ValidationError,
    FastDependsValidationError,
    json.JSONDecodeError,
    UnicodeDecodeError,
)
"""What ``no_retry_on`` holds by default; extend it with ``(*DECODE_ERRORS, MyError)``."""


def quotes_input(error: BaseException) -> bool:
    """Whether the error's own text (and so a traceback's last line) quotes the message body:
    pydantic's and FastDepends' validation errors do."""
    return isinstance(error, pydantic.ValidationError | FastDependsValidationError)


def describe_exception(error: BaseException) -> str:
    """The exception's text, except that validation errors are described by field and rule
    only: pydantic's and FastDepends' own text quotes the input, which is the message body."""
    if isinstance(error, FastDependsValidationError):
        error = error.original_error
    if isinstance(error, pydantic.ValidationError):
        return _validation_summary(error)
    return str(error)


def _validation_summary(error: pydantic.ValidationError) -> str:
    details: list[Any] = error.errors(include_url=False, include_context=False, include_input=False)
    parts = [
        f"{'.'.join(str(part) for part in detail['loc']) or '-'}: {detail['msg']} "
        f"[{detail['type']}]"
        for detail in details
    ]
    return f"{len(details)} validation error(s) for {error.title}: " + "; ".join(parts)
