import os

import pytest

# Tests never log to Weights & Biases nor read a user's data/runs/reports folders by accident.
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture
def isolated_paths(tmp_path, monkeypatch):
    """Run and report folders in a temporary directory (data stays where the test puts it)."""
    monkeypatch.setenv("REPLICATE_RUN_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("REPLICATE_REPORT_DIR", str(tmp_path / "reports"))
    return tmp_path
