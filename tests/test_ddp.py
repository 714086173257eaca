"""torchrun with two CPU processes (gloo): one run directory, the same model on both ranks,
and a run killed after its first epoch resumes to exactly the uninterrupted result."""

import json
import os
import subprocess
import sys

import pytest
import torch

from facekd.files import load_checkpoint
from facekd.app.cli import main

# `facekd` that dies right after rank 0 saves epoch 0's last.pt, as test_engine's resume test does
KILLED_CLI = """
import sys
import facekd.engine as engine
from facekd.app.cli import main

real_save = engine.save_checkpoint


def save_then_die(state, path):
    real_save(state, path)
    if path.name == "last.pt" and state["epoch"] == 0:
        raise KeyboardInterrupt


engine.save_checkpoint = save_then_die
sys.exit(main())
"""


def torchrun(target: list[str], out, dump, config, *extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FACEKD_DUMP_FINAL_STATE": str(dump)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target,
           "train-teacher", "--preset", "smoke", "--config", str(config), "--out", str(out), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def final_states(dump) -> list[dict]:
    return [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in range(2)]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted two-process run, shared by the tests below."""
    root = tmp_path_factory.mktemp("ddp")
    # threads = 1: bit-exact comparisons need a fixed reduction order
    (root / "tiny.toml").write_text("resolutions = [[64, 2]]\nthreads = 1\n")
    proc = torchrun(["-m", "facekd"], root / "run", root / "dump", root / "tiny.toml")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, proc


def test_two_ranks_write_one_run_and_end_identical(straight):
    root, proc = straight
    run = root / "run"
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith("events.")) == \
        ["best.pt", "config.json", "last.pt", "metrics.jsonl", "result.json"]
    assert len(list(root.rglob("events.out.tfevents.*"))) == 1
    assert len(list(root.rglob("metrics.jsonl"))) == 1
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    config = json.loads((run / "config.json").read_text())
    assert (config["world_size"], config["effective_batch_size"]) == (2, 2 * config["batch_size"])
    assert config["effective_lr"] == pytest.approx(2 * config["lr"])
    assert "effective batch 8" in proc.stderr + proc.stdout

    rank0, rank1 = final_states(root / "dump")
    assert_same(rank0, rank1)  # parameters and BatchNorm buffers alike
    assert_same(rank0, load_checkpoint(run / "last.pt")["model"])  # what rank 0 saved, unwrapped


def test_resume_under_torchrun_matches_an_uninterrupted_run(straight, tmp_path):
    root, _ = straight
    config = root / "tiny.toml"
    (tmp_path / "killed_cli.py").write_text(KILLED_CLI)
    killed = torchrun([str(tmp_path / "killed_cli.py")], tmp_path / "run", tmp_path / "unused", config)
    assert killed.returncode != 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 0

    resumed = torchrun(["-m", "facekd"], tmp_path / "run", tmp_path / "dump1", config, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed" in resumed.stderr  # a log line: stdout holds the command's result
    straight0, _ = final_states(root / "dump")  # same initial weights: both runs use the default seed
    for state in final_states(tmp_path / "dump1"):  # both ranks
        assert_same(straight0, state)
    steps = [load_checkpoint(run / "last.pt")["step"] for run in (tmp_path / "run", root / "run")]
    assert steps[0] == steps[1]


def test_resume_needs_the_same_number_of_processes(straight, capsys):
    root, _ = straight
    before = sorted(p.name for p in (root / "run").iterdir())
    assert main(["train-teacher", "--config", str(root / "tiny.toml"), "--out", str(root / "run"), "--resume"]) == 2
    assert "trained by 2 process(es)" in capsys.readouterr().err
    assert sorted(p.name for p in (root / "run").iterdir()) == before  # nothing written


def test_two_ranks_under_a_budget_stop_together_on_time(tmp_path):
    # rank 0's progress is broadcast every step: both ranks must take the same number of steps,
    # switch resolution at the same step and stop together, or DDP would hang or diverge
    (tmp_path / "tiny.toml").write_text("resolutions = [[64, 3], [96, 1]]\nthreads = 1\neval_every = 2\n")
    proc = torchrun(["-m", "facekd"], tmp_path / "run", tmp_path / "dump", tmp_path / "tiny.toml", "--budget", "0.25")
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert abs(result["budget_spent_s"] - 15) < 4, result
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert logged[-1]["lr"] == pytest.approx(config["effective_lr"] * config["min_lr_ratio"])
    assert logged[0]["size"] == 64 and logged[-1]["size"] == 96
    rank0, rank1 = final_states(tmp_path / "dump")
    assert_same(rank0, rank1)
