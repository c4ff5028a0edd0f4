import pytest

from tests.streams.harness import RUNTIMES


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    """The worker runtime a stream test runs under: each of them, one suite."""
    return str(request.param)
