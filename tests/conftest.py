import os

import pytest
import torch

# Tests never log to Weights & Biases nor read a user's data/runs/reports folders by accident.
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture
def isolated_paths(tmp_path, monkeypatch):
    """Run and report folders in a temporary directory (data stays where the test puts it)."""
    monkeypatch.setenv("REPLICATE_RUN_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("REPLICATE_REPORT_DIR", str(tmp_path / "reports"))
    return tmp_path


@pytest.fixture
def one_thread():
    """Small tensors: one thread is faster than two, and far faster on a busy machine
    (`pytestmark = pytest.mark.usefixtures("one_thread")` in the model test files)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
