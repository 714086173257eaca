import shutil
from pathlib import Path

import pytest
import torch

import students  # noqa: F401  (the model registries, filled as the application fills them)
import teachers  # noqa: F401
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


@pytest.fixture
def kill_after_epoch(monkeypatch):
    """kill_after_epoch(n): the next run dies (KeyboardInterrupt) right after it saves epoch n's
    last.pt, as a killed process would; kill_after_epoch(None) lets runs finish again."""
    import facekd.engine as engine
    real_save = engine.save_checkpoint

    def arm(epoch):
        def save_then_die(state, path):
            real_save(state, path)
            if path.name == "last.pt" and state["epoch"] == epoch:
                raise KeyboardInterrupt
        monkeypatch.setattr(engine, "save_checkpoint", real_save if epoch is None else save_then_die)
    return arm
