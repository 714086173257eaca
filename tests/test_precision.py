"""bf16 forward passes: which precision `auto` picks, and that a bf16 run trains fp32 weights
and records what it ran at."""

import json

import pytest
import torch

import facekd.precision as precision
from facekd.config import RunConfig, apply_overrides
from facekd.files import load_checkpoint
from facekd.losses import training_loss
from facekd.models import build_model, named_config
from facekd.precision import autocast, resolve_precision
from teachers.train import train_teacher

CPU = torch.device("cpu")


@pytest.mark.parametrize("has_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_processor(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: has_bf16)
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 sse\n\nflags\t: other\n")
    assert {"avx2", "avx512_bf16"} <= precision.cpu_flags(tmp_path / "cpuinfo")
    assert precision.cpu_flags(tmp_path / "missing") == set()


def test_a_precision_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto"):
        apply_overrides(RunConfig(), {"precision": "fp16"})
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("half", CPU)


def test_a_bf16_step_runs_the_forward_in_bf16_and_keeps_fp32_weights():
    torch.manual_seed(0)
    model = build_model(named_config("tiny", 64)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss_fn = training_loss(RunConfig(loss_weights={"ce": 1.0, "dice": 0.5}))
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 19, (2, 64, 64))
    before = [p.detach().clone() for p in model.parameters()]
    with autocast("bf16", CPU):
        logits = model(images)
    assert logits.dtype == torch.bfloat16
    terms = loss_fn(logits.float(), images, labels)
    assert terms["loss"].dtype == torch.float32 and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    optimizer.step()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("has_bf16, used", [(True, "bf16"), (False, "fp32")])
def test_a_run_records_the_precision_it_ran_at(tmp_path, sample_root, monkeypatch, has_bf16, used):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: has_bf16)
    cfg = apply_overrides(RunConfig(), dict(model="teacher_tiny", resolutions=[[64, 1]], batch_size=8,
                                            warmup_epochs=0.5, precision="auto"))
    result = train_teacher(cfg, sample_root, tmp_path / "run", show_progress=False)
    snapshot = json.loads((tmp_path / "run" / "config.json").read_text())
    assert snapshot["precision"] == "auto" and snapshot["precision_used"] == used
    assert result["precision"] == used
    assert load_checkpoint(tmp_path / "run" / "best.pt")["precision"] == used
    assert json.loads((tmp_path / "run" / "result.json").read_text())["precision"] == used
