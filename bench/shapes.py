"""Handler shapes as users write them, and the messages they read.

The no-op and sleep handlers of the first sections take ``body: int`` on messages holding a
JSON int. The shapes here read a small JSON order instead (about 190 bytes), the kind of
message a service decodes into a dict or a pydantic model.
"""

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel

CREATED_AT = "2026-11-27T17:00:00+00:00"


class Item(BaseModel):
    sku: str
    quantity: int
    unit_price: float


class Order(BaseModel):
    id: int
    customer: str
    currency: str
    created_at: datetime
    items: list[Item]


class Receipt(BaseModel):
    """What the publishing handler returns (and FastStream publishes)."""

    order_id: int
    total: float


def order(index: int) -> dict[str, Any]:
    return {
        "id": index,
        "customer": f"customer-{index % 97}",
        "currency": "EUR",
        "created_at": CREATED_AT,
        "items": [
            {"sku": "A-100", "quantity": 2, "unit_price": 9.5},
            {"sku": "B-200", "quantity": 1, "unit_price": 24.0},
        ],
    }


def order_payload(index: int) -> bytes:
    return json.dumps(order(index), separators=(",", ":")).encode()


def int_payload(index: int) -> bytes:
    """A small JSON value (FastStream decodes it into the handler's ``body: int``)."""
    return str(index).encode()


PAYLOADS = {"int": int_payload, "order": order_payload}


def receipt(body: Order) -> Receipt:
    return Receipt(order_id=body.id, total=sum(i.quantity * i.unit_price for i in body.items))
