import shutil
from pathlib import Path

import pytest
import torch

from facekd.data import SAMPLE_DATA


@pytest.fixture
def sample_root() -> Path:
    return SAMPLE_DATA


@pytest.fixture
def data_copy(tmp_path) -> Path:
    """A writable copy of the embedded sample, for tests that corrupt it."""
    root = tmp_path / "data"
    shutil.copytree(SAMPLE_DATA, root)
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
