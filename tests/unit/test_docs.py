"""Every ```python block of README.md and docs/**/*.md compiles, imports only names the library
has, and runs (against a prelude of the names the pages assume, without a broker); blocks with a
top-level ``await`` need a broker and are only compiled. Pages include longer code from files
the suite runs (pymdown snippets), which ``mkdocs build --strict`` checks exist."""

import ast
import asyncio
import gc
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.middlewares import AckPolicy
from pydantic import BaseModel

import faststream_concurrent_aiokafka as library

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def included(source: str) -> bool:
    """A block that only includes a file (``--8<-- "examples/..."``): the suite runs that file."""
    return all(line.strip().startswith("--8<--") for line in source.splitlines() if line.strip())


def python_blocks() -> list[tuple[str, str]]:
    return [
        (f"{page.relative_to(ROOT)}#{index}", match.group(1))
        for page in PAGES
        for index, match in enumerate(BLOCK.finditer(page.read_text(encoding="utf-8")), 1)
        if not included(match.group(1))
    ]


BLOCKS = python_blocks()


class Order(BaseModel):
    order_id: int = 0


class Invoice(BaseModel):
    order_id: int = 0


class Payment(BaseModel):
    amount: int = 0


async def make_invoice(order: Order) -> Invoice:
    return Invoice(order_id=order.order_id)


def prelude() -> dict[str, Any]:
    """What the pages' fragments take as already there: a broker with the middleware, the
    FastStream names, the library's, and the application's own types."""
    broker = KafkaBroker("localhost:9092")
    broker.add_middleware(library.KafkaConcurrentProcessingMiddleware)
    return {
        "__name__": "docs_block",
        "FastStream": FastStream,
        "KafkaBroker": KafkaBroker,
        "KafkaMessage": KafkaMessage,
        "AckPolicy": AckPolicy,
        "KafkaConcurrentProcessingMiddleware": library.KafkaConcurrentProcessingMiddleware,
        "initialize_concurrent_processing": library.initialize_concurrent_processing,
        "stop_concurrent_processing": library.stop_concurrent_processing,
        "setup_concurrent_processing": library.setup_concurrent_processing,
        "configure_subscriber": library.configure_subscriber,
        "broker": broker,
        "stop_event": asyncio.Event(),
        "Order": Order,
        "Invoice": Invoice,
        "Payment": Payment,
        "make_invoice": make_invoice,
    }


@pytest.fixture(autouse=True)
def _process_state_kept(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Blocks may tune the collector or register a Prometheus collector: keep both local."""
    monkeypatch.setattr(prometheus_client, "REGISTRY", prometheus_client.CollectorRegistry())
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def test_the_pages_have_python_blocks() -> None:
    assert len(BLOCKS) >= 5, [name for name, _ in BLOCKS]


@pytest.mark.parametrize(("name", "source"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_python_block_compiles_imports_and_runs(name: str, source: str) -> None:
    code = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    tree = ast.parse(source)
    imports = ast.Module(
        body=[node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)],
        type_ignores=[],
    )
    exec(compile(imports, name, "exec"), prelude())  # every imported name exists
    if code.co_flags & inspect.CO_COROUTINE:  # a top-level await, which needs a broker
        return
    exec(code, prelude())
