import pytest

from tests.kafka_helpers import BOOTSTRAP


@pytest.fixture
def bootstrap() -> str:
    return BOOTSTRAP
