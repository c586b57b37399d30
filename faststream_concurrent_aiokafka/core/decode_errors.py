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
import time
from typing import Any, Final, get_args

import pydantic
from fast_depends.exceptions import ValidationError as FastDependsValidationError
from pydantic_core.core_schema import ErrorType

DECODE_ERRORS: Final[tuple[type[Exception], ...]] = (
    pydantic.ValidationError,
    FastDependsValidationError,
    json.JSONDecodeError,
    UnicodeDecodeError,
)
"""What ``no_retry_on`` holds by default; extend it with ``(*DECODE_ERRORS, MyError)``."""


# A summary names at most this many errors and is cut to this many characters: a body with
# thousands of bad fields must not make a log line (or a header) of that size.
MAX_LISTED_ERRORS: Final = 5
MAX_SUMMARY_CHARS: Final = 400
# Locations hidden by a star: a dict key of the body, a list index too long to be one.
HIDDEN: Final = "*"
_MAX_INDEX: Final = 999_999
# Error types whose message is the user's own text (a validator's ValueError/AssertionError),
# which often quotes the value it refused.
_USER_TEXT_TYPES: Final = frozenset({"value_error", "assertion_error"})
_BUILTIN_TYPES: Final = frozenset(get_args(ErrorType))
# How often the set of model field names may be rebuilt for a name not found in it.
_REBUILD_EVERY_SEC: Final = 60.0


def quotes_input(error: BaseException) -> bool:
    """Whether the error, or one it was raised from or groups, is a validation error: their
    text (and so a traceback's last lines) quotes the message body."""
    return _validation_error_in(error) is not None


def describe_exception(error: BaseException) -> str:
    """The exception's text, except that validation errors are described by field and rule
    only: pydantic's and FastDepends' own text quotes the input, which is the message body.
    An error raised from (or grouping) a validation error is described by that one alone: its
    own text may well repeat it."""
    found = _validation_error_in(error)
    if found is None:
        return str(error)
    summary = _validation_summary(found)
    return summary if found is _unwrapped(error) else f"raised from {summary}"


def _unwrapped(error: BaseException) -> BaseException:
    return error.original_error if isinstance(error, FastDependsValidationError) else error


def _validation_error_in(error: BaseException) -> pydantic.ValidationError | None:
    """The first pydantic error in ``error``, what it was raised from or during, or what it
    groups (each error looked at once: a cycle of causes ends)."""
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = _unwrapped(pending.pop())
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, pydantic.ValidationError):
            return current
        if isinstance(current, FastDependsValidationError):  # no pydantic error inside
            continue
        pending += [e for e in (current.__context__, current.__cause__) if e is not None]
        if isinstance(current, BaseExceptionGroup):
            pending += reversed(current.exceptions)
    return None


def _validation_summary(error: pydantic.ValidationError) -> str:
    """``N validation error(s) for Model: loc: rule; ...``, listing errors while they fit in
    MAX_LISTED_ERRORS and MAX_SUMMARY_CHARS and counting the rest."""
    details: list[Any] = error.errors(include_url=False, include_input=False)
    fields = _ModelFields.current()
    text = f"{len(details)} validation error(s) for {_name(error.title, fields)}: "
    listed = 0
    for detail in details[:MAX_LISTED_ERRORS]:
        part = f"{'; ' if listed else ''}{_location(detail['loc'], fields)}: {_rule(detail)}"
        if len(text) + len(part) + len(_more(len(details))) > MAX_SUMMARY_CHARS:
            break
        text += part
        listed += 1
    rest = len(details) - listed
    return text + (_more(rest)[0 if listed else 2 :] if rest else "")


def _more(count: int) -> str:
    return f"; and {count} more"


def _location(loc: tuple[str | int, ...], fields: "_ModelFields") -> str:
    """Field names of models as they are; list indexes as ``[i]``; anything else (a dict key
    of the body, a union member's tag) as ``*``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]" if 0 <= part <= _MAX_INDEX else f"[{HIDDEN}]"
        else:
            text += ("." if text else "") + _name(part, fields)
    return text or "-"


def _name(part: str, fields: "_ModelFields") -> str:
    return part if fields.knows(part) else HIDDEN


def _rule(detail: dict[str, Any]) -> str:
    """pydantic's own message for its own rules; only the type for a validator's text or a
    parser's detail, which may quote the input."""
    kind = str(detail["type"])
    context = detail.get("ctx") or {}
    if kind in _USER_TEXT_TYPES or kind not in _BUILTIN_TYPES or "error" in context:
        return f"[{kind}]"
    return f"{detail['msg']} [{kind}]"


class _ModelFields:
    """The field names (and aliases) and class names of every pydantic model defined so far:
    what a location may show. Built at the first validation error; rebuilt for a name not in
    it when models were defined since (pydantic keeps no registry: the count of direct
    subclasses tells, and once a minute the whole tree is looked at again)."""

    _current: "_ModelFields | None" = None

    def __init__(self) -> None:
        self.built = time.monotonic()
        self.generation = _generation()
        self.names: set[str] = set()
        pending: list[type[pydantic.BaseModel]] = [pydantic.BaseModel]
        while pending:
            model = pending.pop()
            pending += model.__subclasses__()
            self.names.add(model.__name__)
            for name, info in model.model_fields.items():
                self.names.add(name)
                if isinstance(info.alias, str):
                    self.names.add(info.alias)

    @classmethod
    def current(cls) -> "_ModelFields":
        if cls._current is None:
            cls._current = cls()
        return cls._current

    def knows(self, name: str) -> bool:
        if name in self.names:
            return True
        stale = time.monotonic() - self.built >= _REBUILD_EVERY_SEC
        if not stale and self.generation == _generation():
            return False
        fresh = _ModelFields._current = _ModelFields()
        return name in fresh.names


def _generation() -> int:
    return len(pydantic.BaseModel.__subclasses__())
