"""Fixtures for tests/models; the data helpers live in blobs.py (a uniquely named module: several test
folders have a conftest, so `from conftest import ...` would pick whichever was imported first)."""
from blobs import blob_data  # noqa: F401  (a fixture)
