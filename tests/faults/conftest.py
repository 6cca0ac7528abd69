"""Fixtures for tests/faults; the helpers live in fault_helpers.py (a uniquely named module: several test
folders have a conftest, so `from conftest import ...` would pick whichever was imported first)."""
from fault_helpers import slow_space, sweeps  # noqa: F401  (fixtures; local_ray, scenes, ... come from tests/conftest.py)
