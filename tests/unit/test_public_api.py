"""The package's public surface: ``__all__`` is what an application writes, and every name it
exported before still resolves, to the same object, warning once where it lives now."""

import importlib
import json
import subprocess
import sys
import warnings

import pytest

import faststream_concurrent_aiokafka
from faststream_concurrent_aiokafka import MOVED

PUBLIC = {
    "ConcurrentProcessing",
    "ConcurrentProcessingSetupError",
    "DECODE_ERRORS",
    "HealthReport",
    "KafkaConcurrentProcessingMiddleware",
    "ProcessingSnapshot",
    "TransactionalPublishError",
    "configure_subscriber",
    "current_attempt",
    "health_report",
    "initialize_concurrent_processing",
    "is_kafka_handler_healthy",
    "pause_processing",
    "processing_snapshot",
    "resume_processing",
    "setup_concurrent_processing",
    "stop_concurrent_processing",
}
# The original project's names (seed README) that stay public, unchanged.
ORIGINAL_PUBLIC = {
    "KafkaConcurrentProcessingMiddleware",
    "initialize_concurrent_processing",
    "stop_concurrent_processing",
    "is_kafka_handler_healthy",
}
# Every name __all__ held before the public surface was cut down.
FORMER_ALL = {
    "DECODE_ERRORS",
    "MAX_EXCEPTION_TEXT_BYTES",
    "AdmittedMessage",
    "CommitterIsDeadError",
    "ConcurrencySettings",
    "ConcurrentProcessingSetupError",
    "GcThresholds",
    "HealthReport",
    "KafkaBatchCommitter",
    "KafkaCommitTask",
    "KafkaConcurrentHandler",
    "KafkaConcurrentProcessingMiddleware",
    "KafkaConcurrentRebalanceListener",
    "KafkaConnection",
    "Ordering",
    "PartitionSnapshot",
    "ProcessingGuarantee",
    "ProcessingSnapshot",
    "ReplayFilter",
    "ReplayReport",
    "SubscriberSettings",
    "SubscriberSnapshot",
    "TargetsNotConfirmed",
    "Totals",
    "TransactionalPublishError",
    "configure_subscriber",
    "describe_exception",
    "health_report",
    "initialize_concurrent_processing",
    "is_kafka_handler_healthy",
    "processing_snapshot",
    "replay_dead_letters",
    "setup_concurrent_processing",
    "stop_concurrent_processing",
    "tune_garbage_collector",
}

# Run in a fresh interpreter: each name warns only the first time it is read in a process.
_PROBE = """
import importlib, json, warnings
import faststream_concurrent_aiokafka as package
out = {}
for name, (module, attribute) in package.MOVED.items():
    with warnings.catch_warnings(record=True) as first:
        warnings.simplefilter("always")
        value = getattr(package, name)
    with warnings.catch_warnings(record=True) as second:
        warnings.simplefilter("always")
        again = getattr(package, name)
    out[name] = {
        "first": [(w.category.__name__, str(w.message), w.filename) for w in first],
        "second": len(second),
        "same": value is getattr(importlib.import_module(module), attribute) and again is value,
    }
print(json.dumps(out))
"""


def test_all_is_the_chosen_public_list() -> None:
    assert set(faststream_concurrent_aiokafka.__all__) == PUBLIC
    assert len(faststream_concurrent_aiokafka.__all__) == len(PUBLIC)
    assert ORIGINAL_PUBLIC <= PUBLIC


def test_every_public_name_imports_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in faststream_concurrent_aiokafka.__all__:
            assert getattr(faststream_concurrent_aiokafka, name) is not None


def test_every_former_name_is_public_or_moved() -> None:
    assert set(MOVED) == FORMER_ALL - PUBLIC
    for module, attribute in MOVED.values():
        assert hasattr(importlib.import_module(module), attribute), (module, attribute)


def test_each_moved_name_warns_once_with_its_new_place_and_is_the_same_object() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    probed = json.loads(result.stdout)
    assert set(probed) == set(MOVED)
    for name, seen in probed.items():
        module, attribute = MOVED[name]
        assert seen["same"], name
        assert seen["second"] == 0, name
        ((category, message, filename),) = seen["first"]
        assert category == "DeprecationWarning"
        assert f"faststream_concurrent_aiokafka.{name} is deprecated" in message
        assert f"from {module} import {attribute}" in message
        assert filename == "<string>", "the warning points at the caller"


def test_the_original_class_name_is_the_renamed_one() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore::DeprecationWarning",
            "-c",
            "from faststream_concurrent_aiokafka import KafkaConcurrentHandler, KafkaCommitTask\n"
            "print(KafkaConcurrentHandler.__name__, KafkaCommitTask.__name__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.split() == ["ConcurrentProcessing", "AdmittedMessage"]


def test_star_import_gives_no_warning() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", "from faststream_concurrent_aiokafka import *"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_an_unknown_name_is_an_attribute_error() -> None:
    assert not hasattr(faststream_concurrent_aiokafka, "NoSuchName")


def test_every_public_name_has_a_docstring_for_the_api_reference() -> None:
    """docs/reference/api.md shows the package's ``__all__`` (mkdocstrings, through griffe)
    and leaves out what has no docstring."""
    griffe = pytest.importorskip("griffe")
    package = griffe.load("faststream_concurrent_aiokafka", resolve_aliases=True)
    undocumented = [name for name in PUBLIC if not package[name].docstring]
    assert undocumented == []
