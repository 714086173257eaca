"""`facekd quantize`: static int8 of a tiny student, its parity with fp32, and its refusals."""

from __future__ import annotations

import pytest
import torch

from compress.quantize import Int8Student, calibration_batch, quantize_checkpoint
from facekd.app.cli import main
from facekd.models import load_model, named_config
from facekd.app.predict import predict_paths
from facekd.files import load_checkpoint
from facekd.data import SAMPLE_DATA, load_split
from facekd.inference import normalize
from facekd.profile import model_cost
from tests.test_export import facekd_cli, make_checkpoint


@pytest.fixture
def tiny_ckpt(tmp_path):
    return make_checkpoint(tmp_path / "best.pt", named_config("tiny", 64))


@pytest.fixture
def int8_ckpt(tmp_path, tiny_ckpt):
    quantize_checkpoint(tiny_ckpt, tmp_path / "int8.pt", SAMPLE_DATA)
    return tmp_path / "int8.pt"


def load(path):
    ckpt = load_checkpoint(path)
    return load_model(ckpt, path), ckpt


def test_int8_logits_follow_fp32_within_tolerance(tiny_ckpt, int8_ckpt):
    fp32, _ = load(tiny_ckpt)
    int8, ckpt = load(int8_ckpt)
    assert isinstance(int8, Int8Student) and ckpt["quantized"]["calibration"]["split"] == "train"
    x = normalize(load_split(SAMPLE_DATA, "val", 64, show_progress=False).images)
    with torch.no_grad():
        want, got = fp32(x), int8(x)
    # Each int8 layer rounds to 1/255 of its calibrated range; a dozen layers compound that
    # to about 1% of the logits' size here (measured: 1.0%). 5% leaves room for another
    # CPU's kernels; a broken graph (a missed observer, a wrong scale) is off by 100% or more.
    assert ((got - want).norm() / want.norm()).item() < 0.05
    assert (got.argmax(1) == want.argmax(1)).float().mean().item() > 0.95


def test_int8_keeps_param_count_and_predicts(tmp_path, tiny_ckpt, int8_ckpt):
    int8, ckpt = load(int8_ckpt)
    fp32, _ = load(tiny_ckpt)
    assert model_cost(int8)["params"] == model_cost(fp32, latency=False)["params"] == ckpt["params"]
    result = predict_paths(int8_ckpt, SAMPLE_DATA / "val" / "images", tmp_path / "masks", show_progress=False)
    assert result["written"] == len(list((SAMPLE_DATA / "val" / "images").iterdir())) and not result["failed"]


def test_a_caller_s_fp32_score_is_kept_and_the_int8_model_still_scored(tmp_path, tiny_ckpt, int8_ckpt):
    scored_here = load_checkpoint(int8_ckpt)
    meta = quantize_checkpoint(tiny_ckpt, tmp_path / "again.pt", SAMPLE_DATA, fp32_val_fscore=0.5)
    assert meta["fp32_val_fscore"] == load_checkpoint(tmp_path / "again.pt")["fp32_val_fscore"] == 0.5
    # the same calibration images give the same int8 model, and so the same score
    assert meta["val_fscore"] == pytest.approx(scored_here["val_fscore"], abs=1e-9)


def test_calibration_reads_train_never_val():
    batch = calibration_batch(SAMPLE_DATA, 64, n=3)
    train = normalize(load_split(SAMPLE_DATA, "train", 64, limit=3, show_progress=False).images)
    assert torch.equal(batch, train)


def test_teacher_and_over_limit_models_are_refused_and_nothing_written(tmp_path, capsys):
    teacher = make_checkpoint(tmp_path / "teacher.pt", named_config("teacher_tiny", 64))
    wide = make_checkpoint(tmp_path / "wide.pt", named_config("resfpn_wide", 64))
    for ckpt, says in ((teacher, "is a teacher checkpoint; quantize a student"), (wide, "fewer than 1,821,085")):
        out = tmp_path / f"{ckpt.stem}_int8.pt"
        assert main(["quantize", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
        assert says in capsys.readouterr().err and not out.exists()


def test_an_int8_checkpoint_is_neither_quantized_again_nor_pruned(tmp_path, int8_ckpt, capsys):
    assert main(["quantize", "--checkpoint", str(int8_ckpt), "--out", str(tmp_path / "again.pt")]) == 2
    assert "is a quantized checkpoint; quantize its fp32 source" in capsys.readouterr().err
    assert not (tmp_path / "again.pt").exists()
    with pytest.raises(ValueError, match="is a quantized checkpoint; prune its fp32 source"):
        load_model(load_checkpoint(int8_ckpt), int8_ckpt, student_for="prune")
    assert load_checkpoint(int8_ckpt)["params"] > 0


def test_report_scores_and_times_an_int8_checkpoint_beside_its_fp32(tmp_path, tiny_ckpt, int8_ckpt):
    from facekd.app.report import write_report
    page = write_report([tiny_ckpt, int8_ckpt], tmp_path / "report", SAMPLE_DATA, show_progress=False).read_text()
    assert f"{tmp_path.name}/int8.pt" in page and f"{tmp_path.name}/best.pt" in page
    assert "speed rank" in page and "interquartile range" in page


def test_quantize_from_a_fresh_process_builds_a_student_and_refuses_a_teacher(tmp_path, tiny_ckpt):
    teacher = make_checkpoint(tmp_path / "teacher.pt", named_config("teacher_tiny", 64))
    done = facekd_cli("quantize", "--checkpoint", tiny_ckpt, "--out", tmp_path / "int8.pt",
                      "--calibration-images", 4, "--no-tta", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert isinstance(load(tmp_path / "int8.pt")[0], Int8Student)
    refused = facekd_cli("quantize", "--checkpoint", teacher, "--out", tmp_path / "teacher_int8.pt", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"facekd quantize: error: {teacher}: is a teacher checkpoint; quantize a student"
    assert not (tmp_path / "teacher_int8.pt").exists()


def test_an_int8_model_stays_on_the_cpu_where_a_gpu_is_picked(tmp_path, tiny_ckpt, int8_ckpt, monkeypatch):
    from facekd.distributed import device_for
    int8, fp32 = load(int8_ckpt)[0], load(tiny_ckpt)[0]
    gpu = torch.device("cuda", 0)  # only compared, never used: the test runs on a CPU machine
    assert device_for([fp32], gpu) == gpu
    assert device_for([int8], gpu) == device_for([fp32, int8], gpu) == torch.device("cpu")
    # predict on a machine whose picked device is not the CPU ("meta", which runs nothing): an
    # int8 model moved there could not predict
    import facekd.app.predict as predict
    monkeypatch.setattr(predict, "pick_device", lambda: torch.device("meta"))
    result = predict_paths(int8_ckpt, SAMPLE_DATA / "val" / "images", tmp_path / "masks", show_progress=False)
    assert result["written"] == 4 and not result["failed"]
