"""benchmarks/ladder_table.py on tiny students and the embedded sample: each rung's arms are
scored per image and paired by seed, the teacher's lead and the share kept follow from those
scores, and the table, JSON and plot are written."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import students
from facekd import challenge
from facekd.checkpoint import save_checkpoint
from facekd.data import load_split
from facekd.files import load_checkpoint
from facekd.models import build_model, load_model, named_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports paired_val beside it
    spec = importlib.util.spec_from_file_location("ladder_table", BENCHMARKS / "ladder_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_student(path: Path, name: str, seed: int) -> None:
    torch.manual_seed(seed)
    cfg = named_config(name, 64)
    if name == "unet":
        cfg.update(stem=16, widths=[16, 32, 48, 64], decoder=[48, 32, 24])
    model = build_model(cfg, allow_over_budget=True)
    path.parent.mkdir(parents=True)
    save_checkpoint({"model": model.state_dict(), "model_cfg": students.model_config(model), "stage": "prune",
                     "val_fscore": 0.0}, path)


def test_the_ladder_table_pairs_arms_by_image_and_writes_table_json_and_plot(tmp_path, sample_root, monkeypatch):
    script = load_script(monkeypatch)
    runs = tmp_path / "runs"
    for rung, arch in (("big", "resfpn"), ("small", "unet")):
        for arm, first_seed in (("a", 10), ("b", 20)):
            for seed in (0, 1):
                write_student(runs / f"{rung}_{arm}_s{seed}" / "best.pt", arch, first_seed + seed)
        (runs / f"{rung}_b_s0" / "config.json").write_text(json.dumps(
            {"loss_weights": {"ce": 1.0, "dice": 0.5, "cwd": 1.0}, "temperature": 4.0, "distill_mode": "offline",
             "teacher_term_size": "output" if rung == "big" else "labels"}))
    write_student(runs / "teacher" / "best.pt", "resfpn", 99)
    (runs / "big_a_s0.log").write_text("a run's log beside its folder\n")
    out = tmp_path / "table"
    monkeypatch.setattr("sys.argv", ["ladder_table.py", str(runs / "small"), str(runs / "big"), "--data",
                                     str(sample_root), "--teacher", str(runs / "teacher" / "best.pt"),
                                     "--out", str(out), "--runs", "4"])
    script.main()
    record = json.loads((out / "ladder.json").read_text())
    assert [r["rung"] for r in record["rungs"]] == ["big", "small"]  # largest first
    assert [r["recipe"] for r in record["rungs"]] == ["cwd 1, T 4, offline", "cwd 1, T 4, offline, at the labels' size"]

    from paired_val import checkpoint_fscores  # scored afresh, one checkpoint at a time
    val = load_split(sample_root, "val", None, show_progress=False)
    teacher = checkpoint_fscores(str(runs / "teacher" / "best.pt"), val)
    for r in record["rungs"]:
        scores = {arm: [checkpoint_fscores(str(runs / f"{r['rung']}_{arm}_s{s}" / "best.pt"), val)
                        for s in (0, 1)] for arm in ("a", "b")}
        a, b = (torch.stack(scores[arm]).mean(0) for arm in ("a", "b"))
        assert r["a"]["val_f"] == pytest.approx([float(s.mean()) for s in scores["a"]])
        assert r["paired_b_minus_a"]["mean"] == pytest.approx(float((b - a).mean()), abs=1e-6)
        lead = float(teacher.mean() - a.mean())
        assert r["teacher_lead_over_a"] == pytest.approx(lead, abs=1e-6)
        assert r["share_of_lead_kept"] == (pytest.approx(float((b - a).mean()) / lead) if lead > 0 else None)
        model = load_model(load_checkpoint(runs / f"{r['rung']}_b_s0" / "best.pt"), "b")
        assert r["params"] == challenge.count_params(model)
        assert r["latency_ms"]["fp32"] > 0 and r["latency_ms"]["int8"] > 0
        assert Path(r["int8"]["file"]).is_file()
    table = (out / "ladder.md").read_text().splitlines()
    assert sum(line.startswith(f"| {r['params']:,} |") for r in record["rungs"] for line in table) == 2
    assert (out / "ladder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rung_without_runs_is_named(tmp_path, monkeypatch):
    script = load_script(monkeypatch)
    with pytest.raises(SystemExit, match=r"nothing: no nothing_a_s<seed>/best.pt beside it"):
        script.arm_folders(str(tmp_path / "nothing"), "a")
