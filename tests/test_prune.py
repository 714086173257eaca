import json

import pytest
import torch

import students
from facekd import challenge
from compress.prune import prune_to_target, rebuild
from facekd.checkpoint import save_checkpoint
from facekd.files import load_checkpoint
from facekd.registry import LOSSES
from facekd.app.cli import main
from facekd.models import build_model, named_config


def small_student(name="unet"):
    cfg = named_config(name, 64)
    if name == "unet":
        cfg.update(stem=16, widths=[16, 32, 48, 64], decoder=[48, 32, 24])
    return build_model(cfg, allow_over_budget=True)


@pytest.mark.parametrize("name", ["unet", "resfpn"])
def test_prune_meets_param_target_and_rebuilds_identically(name, tmp_path):
    model = small_student(name)
    before = challenge.count_params(model)
    target = int(before * 0.6)
    report = prune_to_target(model, target_params=target, example_size=64)
    assert report["params_after"] <= target < report["params_before"] == before
    model.eval()
    fresh, cfg = rebuild(model)
    # through a weights_only checkpoint, exactly as the export and resume paths load it
    save_checkpoint({"model": fresh.state_dict(), "model_cfg": cfg}, tmp_path / "pruned.pt")
    ckpt = load_checkpoint(tmp_path / "pruned.pt")
    loaded = build_model(ckpt["model_cfg"], allow_over_budget=True)
    loaded.load_state_dict(ckpt["model"])
    loaded.eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(x), loaded(x))
    loaded.train()
    loaded(x).mean().backward()  # the rebuilt model still trains


def test_wide_student_prunes_below_the_challenge_limit():
    wide = build_model(named_config("resfpn_wide", 512), allow_over_budget=True)
    report = prune_to_target(wide, target_params=challenge.PARAM_LIMIT - 1, example_size=64)
    assert report["params_after"] < challenge.PARAM_LIMIT
    fresh, cfg = rebuild(wide)
    build_model(cfg)  # no longer needs allow_over_budget


def test_mac_target_and_ratio_and_bad_arguments():
    model = small_student("resfpn")
    report = prune_to_target(model, target_macs=10_000_000, example_size=64)
    assert report["macs_after"] <= 10_000_000 < report["macs_before"]
    model = small_student("resfpn")
    report = prune_to_target(model, ratio=0.5, example_size=64)
    assert report["params_after"] < report["params_before"]
    with pytest.raises(ValueError, match="exactly one"):
        prune_to_target(small_student(), ratio=0.5, target_params=10)
    with pytest.raises(ValueError, match="without reaching"):
        prune_to_target(small_student(), target_params=10, steps=3, example_size=64)


def test_classifier_keeps_all_classes():
    model = small_student("resfpn")
    prune_to_target(model, ratio=0.7, example_size=64)
    assert model(torch.randn(1, 3, 64, 64)).shape[1] == 19


def test_prune_command_end_to_end(tmp_path, sample_root, capsys):
    """Issue 34 too: prune printed all of prune_report.json, about 170 lines; it prints a few
    closing lines, and the report with --json."""
    student = small_student("resfpn")
    save_checkpoint({"model": student.state_dict(), "model_cfg": students.model_config(student),
                     "stage": "distill", "val_fscore": 0.0}, tmp_path / "student.pt")
    out = tmp_path / "pruned"
    args = ["prune", "--student", str(tmp_path / "student.pt"), "--out", str(out), "--target-params",
            str(challenge.count_params(student) // 2)]
    capsys.readouterr()
    assert main(args) == 0
    report = json.loads((out / "prune_report.json").read_text())
    # stdout holds the closing lines alone: the training log goes to stderr
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 4, printed
    assert printed[0].startswith(f"pruned {tmp_path / 'student.pt'} to --target-params ")
    assert printed[-1] == f"wrote {out / 'best.pt'}; every figure is in {out / 'prune_report.json'} (--json prints it)"
    assert report["after_pruning"]["params"] <= challenge.count_params(student) // 2
    for stage in ("before", "after_pruning", "after_finetune"):
        assert {"params", "macs", "latency_ms", "val_fscore"} <= set(report[stage])
    assert_stages_timed_side_by_side(out, report)
    best = load_checkpoint(out / "best.pt")
    assert best["model_cfg"]["widths"] != students.model_config(student)["widths"]
    assert main(args + ["--resume", "--json"]) == 0  # a finished run resumes to a no-op, not timed again
    printed = capsys.readouterr()  # the report alone on stdout; the resume's log line on stderr
    assert json.loads((out / "prune_report.json").read_text()) == report == json.loads(printed.out)
    assert "\nresumed " in "\n" + printed.err.replace("\r", "\n")
    assert_stages_timed_side_by_side(out, report)


def assert_stages_timed_side_by_side(out, report):
    """Each stage's latency_ms is its median in one record that timed all three stages in the
    same interleaved rounds, at 1 and 2 threads; TensorBoard's prune/latency_ms says the same."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    stages = ["before", "after_pruning", "after_finetune"]
    timed = report["latency"]["threads"]
    assert set(timed) == {"1", "2"} and report["latency"]["size"] == report["before"]["size"]
    for at in timed.values():
        assert list(at["models"]) == stages and all(s["runs"] >= 20 for s in at["models"].values())
    assert [report[s]["latency_ms"] for s in stages] == [timed["1"]["models"][s]["median_ms"] for s in stages]
    logged = EventAccumulator(str(out)).Reload().Scalars("prune/latency_ms")
    assert [e.step for e in logged] == [0, 1, 2]
    assert [e.value for e in logged] == pytest.approx([report[s]["latency_ms"] for s in stages], rel=1e-6)


def test_finetune_command_continues_the_student_as_it_is(tmp_path, sample_root, capsys):
    student = small_student("resfpn")
    save_checkpoint({"model": student.state_dict(), "model_cfg": students.model_config(student),
                     "stage": "pruned", "val_fscore": 0.0}, tmp_path / "student.pt")
    out = tmp_path / "tuned"
    cwd_toml = tmp_path / "cwd.toml"
    cwd_toml.write_text("cwd_weight = 1\n")  # as the prune preset sets it: inert without a teacher
    args = ["finetune", "--student", str(tmp_path / "student.pt"), "--out", str(out), "--set", "resolutions=[[64, 1]]",
            "--config", str(cwd_toml)]
    assert main(args) == 0
    tuned = load_checkpoint(out / "last.pt")
    assert tuned["model_cfg"] == students.model_config(student)  # nothing cut
    assert tuned["stage"] == "finetune"
    before = student.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in tuned["model"].items() if v.is_floating_point())  # it trained
    record = json.loads((out / "config.json").read_text())
    assert record["teacher"] == "none"
    # the config keeps the CWD weight it was given; the record of what trained leaves it out
    assert record["loss_weights"]["cwd"] == 1 and "cwd" not in record["losses_trained"]
    assert record["losses_trained"] == {k: w for k, w in record["loss_weights"].items()
                                        if w > 0 and LOSSES[k].uses == "labels"}

    teacher_cfg = named_config("teacher_tiny", 64)
    save_checkpoint({"model": build_model(teacher_cfg).state_dict(), "model_cfg": teacher_cfg, "stage": "teacher"},
                    tmp_path / "teacher.pt")
    capsys.readouterr()
    assert main(["finetune", "--student", str(tmp_path / "teacher.pt"), "--out", str(tmp_path / "no")]) == 2
    assert "teacher.pt: is a teacher checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_taylor_pruning_leaves_batchnorm_statistics_and_mode_untouched(mode, sample_root):
    from compress.train import taylor_gradients
    model = small_student("resfpn")
    bns = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    with torch.no_grad():  # distinct statistics, so each surviving channel can be traced to its origin
        for bn in bns.values():
            bn.running_mean.copy_(torch.randn_like(bn.running_mean))
            bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
            bn.num_batches_tracked.fill_(7)
    before = {name: (bn.running_mean.clone(), bn.running_var.clone()) for name, bn in bns.items()}
    model.train(mode == "train")
    report = prune_to_target(model, target_params=int(challenge.count_params(model) * 0.7), importance="taylor",
                             example_size=64, gradient_fn=taylor_gradients(sample_root, size=64, n=4))
    assert report["steps"] > 0 and model.training == (mode == "train")
    assert any(len(bn.running_mean) < len(before[name][0]) for name, bn in bns.items())  # it did prune
    for name, bn in bns.items():
        mean0, var0 = before[name]
        kept = [(mean0 == v).nonzero().flatten() for v in bn.running_mean]
        assert all(len(k) == 1 for k in kept), f"{name}: running_mean moved"
        kept = torch.cat(kept)
        assert torch.equal(bn.running_mean, mean0[kept]) and torch.equal(bn.running_var, var0[kept]), name
        assert int(bn.num_batches_tracked) == 7, name


def _macs_as_latency(monkeypatch):
    """Latency checks answered by MACs (1 ms per MMAC), so target searches are deterministic."""
    import compress.prune as prune
    from facekd.profile import count_macs
    monkeypatch.setattr(prune, "search_latency", lambda model, size, threads: count_macs(model, size) / 1e6)


def test_latency_target_is_met_and_an_unreachable_one_is_named(monkeypatch):
    from compress.prune import search_latency
    _macs_as_latency(monkeypatch)
    import compress.prune as prune
    model = small_student("resfpn")
    start = prune.search_latency(model, 64, 1)
    report = prune_to_target(model, target_latency_ms=0.5 * start, example_size=64)
    assert prune.search_latency(model, 64, 1) <= 0.5 * start and report["params_after"] < report["params_before"]
    with pytest.raises(ValueError, match=r"--target-latency 0.001: unreachable; cutting every layer by 90% leaves"):
        prune_to_target(small_student("resfpn"), target_latency_ms=0.001, example_size=64)
    assert search_latency(small_student("resfpn"), 32, 1) > 0  # the real one times a forward pass


def test_choose_rounding_by_latency_per_mac_near_the_target():
    from compress.prune import PruneTarget, choose_rounding
    from facekd.latency import spread
    reports = {8: {"params_after": 990, "macs_after": 100}, 16: {"params_after": 950, "macs_after": 96},
               32: {"params_after": 600, "macs_after": 60}}
    ms = {8: 50.0, 16: 40.0, 32: 20.0}
    spreads = {r: spread([v] * 4) for r, v in ms.items()}
    # 32 is fastest, even per MAC, but cut far past the size asked for; 16 is faster per MAC than 8
    assert choose_rounding(reports, spreads, PruneTarget("params", 1000)) == 16
    assert choose_rounding(reports, spreads, PruneTarget("macs", 100)) == 16
    # a latency target keeps the largest model that meets it
    assert choose_rounding(reports, spreads, PruneTarget("latency", 45.0)) == 16
    assert choose_rounding(reports, spreads, PruneTarget("latency", 60.0)) == 8


def test_round_to_auto_keeps_the_closest_candidate_unless_another_is_faster_beyond_the_spread():
    """Timed on a busy machine, two near candidates' spreads overlap and either median may be
    lower: the choice must not follow that noise (a ladder's two arms once pruned to 473,347
    and 439,723 parameters from one command). Only a gap wider than the quartiles moves it."""
    from compress.prune import PruneTarget, choose_rounding
    from facekd.latency import spread
    reports = {8: {"params_after": 990, "macs_after": 100}, 16: {"params_after": 950, "macs_after": 100}}
    target = PruneTarget("params", 1000)
    overlapping = [{8: spread([48.0, 50.0, 52.0, 54.0]), 16: spread([47.0, 48.0, 52.0, 55.0])},
                   {8: spread([47.0, 48.0, 52.0, 55.0]), 16: spread([48.0, 50.0, 52.0, 54.0])}]
    assert overlapping[0][16]["median_ms"] < overlapping[0][8]["median_ms"]  # 16 looks faster, by noise
    assert [choose_rounding(reports, s, target) for s in overlapping] == [8, 8]
    apart = {8: spread([48.0, 50.0, 52.0, 54.0]), 16: spread([38.0, 40.0, 42.0, 44.0])}
    assert choose_rounding(reports, apart, target) == 16
    # equal sizes: the finer rounding is the closest
    assert choose_rounding({32: reports[8], 8: reports[8]}, {32: apart[8], 8: apart[8]}, target) == 8


def test_a_latency_target_no_rounding_meets_on_the_retiming_is_refused():
    from compress.prune import PruneTarget, choose_rounding
    from facekd.latency import spread
    reports = {8: {"params_after": 990, "macs_after": 100}, 16: {"params_after": 950, "macs_after": 96}}
    spreads = {8: spread([50.0] * 20), 16: spread([40.0] * 20)}
    with pytest.raises(ValueError, match=r"--target-latency 30: no channel rounding meets it once the pruned "
                                         r"candidates are timed side by side \(fastest: round_to 16, 40.00 ms over 20"):
        choose_rounding(reports, spreads, PruneTarget("latency", 30.0))


def test_a_single_prune_checks_the_latency_floor_before_searching(tmp_path, capsys, monkeypatch):
    import compress.prune as prune

    def search_latency(model, size, threads):
        raise AssertionError("the target search ran: the floor check should have refused first")
    monkeypatch.setattr(prune, "search_latency", search_latency)
    student = small_student("resfpn")
    save_checkpoint({"model": student.state_dict(), "model_cfg": students.model_config(student),
                     "stage": "distill", "val_fscore": 0.0}, tmp_path / "student.pt")
    out = tmp_path / "pruned"
    assert main(["prune", "--student", str(tmp_path / "student.pt"), "--out", str(out), "--target-latency",
                 "0.001"]) == 2
    err = capsys.readouterr().err
    assert "--target-latency 0.001: unreachable; cutting every layer by 90% leaves" in err
    assert "ms at 64x64, 1 thread(s)" in err and not out.exists()


def test_round_to_auto_prunes_each_and_keeps_the_chosen():
    import compress.prune as prune
    from facekd.profile import count_macs
    model = small_student("resfpn")
    half = prune.PruneTarget("params", challenge.count_params(model) // 2)
    pruned, report = prune.prune_fastest_rounding(model, half, example_size=64)
    rounding = report["rounding"]
    assert rounding["chosen"] == report["round_to"] and set(rounding["candidates"]) <= {"8", "16", "32"}
    assert challenge.count_params(pruned) == report["params_after"] <= challenge.count_params(model) // 2
    assert count_macs(pruned, 64) == rounding["candidates"][str(report["round_to"])]["macs"]
    assert rounding["candidates"][str(report["round_to"])]["latency"]["runs"] >= 20
    with pytest.raises(ValueError, match="--round-to 12"):
        prune.prune_fastest_rounding(small_student("resfpn"), prune.PruneTarget("ratio", 0.5), round_to=12,
                                     example_size=64)


def test_prune_refuses_an_unreachable_latency_and_writes_nothing(tmp_path, sample_root, capsys):
    student = small_student("resfpn")
    save_checkpoint({"model": student.state_dict(), "model_cfg": students.model_config(student),
                     "stage": "distill", "val_fscore": 0.0}, tmp_path / "student.pt")
    for extra in ([], ["--sweep"]):
        out = tmp_path / f"pruned{len(extra)}"
        assert main(["prune", "--student", str(tmp_path / "student.pt"), "--out", str(out), "--target-latency",
                     "0.001", "--round-to", "8", *extra]) == 2
        assert "--target-latency 0.001: unreachable; cutting every layer by 90% leaves" in capsys.readouterr().err
        assert not out.exists()


def test_sweep_checks_latency_targets_against_the_student_and_the_floor(tmp_path):
    from compress.sweep import check_sweep_targets
    student = small_student("resfpn")
    path = tmp_path / "student.pt"
    save_checkpoint({"model": student.state_dict(), "model_cfg": students.model_config(student)}, path)
    with pytest.raises(ValueError, match="--target-latency 1,000,000.0: not below the student's own"):
        check_sweep_targets(path, "latency", [1e6])
    with pytest.raises(ValueError, match="--target-latency 0.001: unreachable; cutting every layer by 90%"):
        check_sweep_targets(path, "latency", [0.001])


def test_a_prune_target_is_recorded_as_older_runs_recorded_it():
    """prune_report.json's "target", which --resume compares with the flags given, keeps the
    format of runs made before PruneTarget: every kind's key, None but the one set, and the
    thread count, in this order."""
    from compress.prune import PruneTarget
    written_before = [{"params": 900000, "macs": None, "ratio": None, "latency_ms": None, "threads": 1},
                      {"params": None, "macs": None, "ratio": 0.3, "latency_ms": None, "threads": 1},
                      {"params": None, "macs": None, "ratio": None, "latency_ms": 12.5, "threads": 2}]
    assert list(PruneTarget("params", 900000).record().items()) == list(written_before[0].items())
    for saved in written_before:
        assert PruneTarget.from_record(saved).record() == saved
    assert PruneTarget.from_record(written_before[2]) == PruneTarget("latency", 12.5, threads=2)
