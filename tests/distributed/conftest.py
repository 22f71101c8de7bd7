"""`gloo`: long-lived CPU worlds of 2 and 4 ranks shared by the whole directory (see gloo_pool.py)."""

from __future__ import annotations

import pytest
from gloo_pool import GlooPools


@pytest.fixture(scope="session")
def gloo():
    pools = GlooPools()
    yield pools
    pools.close()
