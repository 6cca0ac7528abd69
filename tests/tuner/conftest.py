"""Shared fixtures: one local Ray per test session (never a cluster someone else started)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def local_ray():
    """A private 2-CPU Ray for the whole session; shut down at the end even if tests fail."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
