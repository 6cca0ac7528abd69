"""Fixtures for tests/faults; the helpers live in fault_helpers.py (a uniquely named module: several test
folders have a conftest, so `from conftest import ...` would pick whichever was imported first)."""
from fault_helpers import local_ray, run_paths, scenes, slow_space, sweeps, tiny_space  # noqa: F401  (fixtures)
