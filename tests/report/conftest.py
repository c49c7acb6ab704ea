"""A tiny generated detection set, for the report's speed tables and figures."""

import pytest

from replicate.data import fashion_mnist
from tests.fakes import write_idx_fashion_mnist


@pytest.fixture
def tiny_detection(tmp_path, monkeypatch):
    """A tiny Fashion-MNIST (not the system one) from which the generated detection set is drawn,
    and run, count and data folders of the test's own."""
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-dataset")
    monkeypatch.setenv("REPLICATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("REPLICATE_RUN_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("REPLICATE_COUNT_DIR", str(tmp_path / "counts"))
    write_idx_fashion_mnist(tmp_path / "data")
    return tmp_path
