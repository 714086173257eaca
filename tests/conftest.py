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


class FakeClock:
    """A clock that stands still until told to move: budgets read it in place of the wall clock,
    so a budgeted run's schedule, stop and reserve follow from the test alone, not from how fast
    or how busy the machine is (issue 34: the wall-clock asserts failed on a loaded machine)."""

    def __init__(self, start: float = 1000.0):
        self.seconds = start

    def __call__(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.seconds += seconds


@pytest.fixture
def fake_clock(monkeypatch) -> FakeClock:
    """Every budget (facekd.budget.now) reads this clock; nothing moves it but the test."""
    import facekd.budget
    clock = FakeClock()
    monkeypatch.setattr(facekd.budget, "clock", clock)
    return clock


@pytest.fixture
def step_seconds(fake_clock, monkeypatch):
    """step_seconds(cost): from now on each training step moves the fake clock on by `cost`
    seconds (a number, or a function of how many steps went before), before the step reads its
    progress. Returns the list of the trained steps' resolutions, which grows as they run."""
    import facekd.engine as engine
    real_batch = engine.train_batch  # called once at the start of every training step
    sizes = []

    def arm(cost):
        def costly_batch(images, *args):
            fake_clock.advance(cost(len(sizes)) if callable(cost) else cost)
            sizes.append(images.shape[-1])
            return real_batch(images, *args)
        monkeypatch.setattr(engine, "train_batch", costly_batch)
        return sizes
    return arm
