"""Seeing results: the pruning sweep and the report page, on tiny runs of the embedded sample."""

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facekd.app.cli import main
from facekd.app.report import pareto_front, write_report
from facekd.files import load_checkpoint

SECTIONS = {"models", "pareto", "per-class", "confusion", "worst", "curves", "sweeps"}
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny student distilled from scratch, and a sweep of two pruning targets from it."""
    root = tmp_path_factory.mktemp("runs")
    # flip TTA off: validation at the sample's native 512x512 is what these runs spend most time on
    (root / "distill.toml").write_text("resolutions = [[64, 2]]\nflip_tta = false\n")
    (root / "prune.toml").write_text("resolutions = [[64, 1]]\nflip_tta = false\n")
    assert main(["distill", "--teacher", "none", "--student", "tiny", "--config", str(root / "distill.toml"),
                 "--out", str(root / "student")]) == 0
    sweep = ["prune", "--sweep", "--student", str(root / "student" / "best.pt"), "--config",
             str(root / "prune.toml"), "--out", str(root / "sweep")]
    assert main(sweep + ["--target-params", "11000,15000"]) == 0
    return root, sweep


def test_sweep_prunes_to_each_target_and_skips_finished_ones(runs, capsys):
    root, sweep = runs
    record = json.loads((root / "sweep" / "sweep.json").read_text())
    student = load_checkpoint(root / "student" / "best.pt")
    assert record["student_size"]["params"] == student["params"]
    assert record["floor"]["params"] < 11000
    assert [r["target"] for r in record["targets"]] == [15000, 11000]  # the mildest cut first
    for row in record["targets"]:
        assert row["params"] <= row["target"]
        assert row["macs"] < record["student_size"]["macs"]
        assert row["latency_ms"] > 0 and 0 <= row["val_fscore_pruned"] <= 1 and 0 <= row["val_fscore_finetuned"] <= 1
        report = json.loads((root / "sweep" / row["run"] / "prune_report.json").read_text())
        assert row["val_fscore_finetuned"] == report["after_finetune"]["val_fscore"]

    best = {r["run"]: (root / "sweep" / r["run"] / "best.pt").stat().st_mtime_ns for r in record["targets"]}
    capsys.readouterr()
    assert main(sweep + ["--target-params", "11000,15000", "--resume"]) == 0
    assert capsys.readouterr().out.count("done earlier, skipped") == 2
    assert {run: (root / "sweep" / run / "best.pt").stat().st_mtime_ns for run in best} == best
    assert main(sweep + ["--target-params", "11000,15000"]) == 2  # an existing sweep needs --resume
    assert "pass --resume" in capsys.readouterr().err


def test_sweep_of_ratios_computes_the_teachers_maps_once(runs, tmp_path):
    root, sweep = runs
    (tmp_path / "offline.toml").write_text((root / "prune.toml").read_text() + 'distill_mode = "offline"\n')
    args = sweep[:-3] + [str(tmp_path / "offline.toml"), "--out", str(tmp_path / "sweep")]
    # the student as its own teacher: any checkpoint serves, and it is already trained
    assert main(args + ["--teacher", str(root / "student" / "best.pt"), "--ratio", "0.4,0.2"]) == 0
    record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["run"] for r in record["targets"]] == ["ratio_0.2", "ratio_0.4"]
    assert all(r["params"] < load_checkpoint(root / "student" / "best.pt")["params"] for r in record["targets"])
    caches = [json.loads((tmp_path / "sweep" / r["run"] / "config.json").read_text())["soft_targets"]["cache"]
              for r in record["targets"]]
    # the sweep fills the cache before its first target, so every target finds it
    assert caches == ["hit", "hit"] and len(list((tmp_path / "sweep" / "soft_targets").iterdir())) == 1


def test_sweep_from_labels_alone_ignores_a_soft_target_cache(runs, tmp_path):
    root, sweep = runs
    args = sweep[:-3] + [str(root / "prune.toml"), "--out", str(tmp_path / "sweep")]
    cache = tmp_path / "cache"
    # no teacher, so no maps to fill: the cache setting must neither crash the sweep nor be written
    assert main(args + ["--teacher", "none", "--ratio", "0.2", "--set", f"soft_target_cache={cache}"]) == 0
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["teacher"] == "none"
    assert not cache.exists()


@pytest.mark.parametrize("target, message", [
    (["--target-params", "15000,99999999"], "not below the student's own"),
    (["--target-params", "15000,5000"], "unreachable"),
    (["--target-macs", "1000"], "unreachable"),
    (["--target-params", "15000,15000"], "listed twice"),
    (["--ratio", "0.3,1.5"], "must be in (0, 1)"),
])
def test_sweep_refuses_a_bad_target_before_writing_anything(runs, tmp_path, capsys, target, message):
    root, sweep = runs
    out = tmp_path / "sweep"
    assert main(sweep[:-1] + [str(out)] + target) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_one_prune_refuses_a_list_and_a_list_must_parse(runs, tmp_path, capsys):
    root, sweep = runs
    args = [a for a in sweep if a != "--sweep"][:-1] + [str(tmp_path / "pruned")]
    assert main(args + ["--target-params", "15000,11000"]) == 2
    assert "pass --sweep" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(sweep + ["--target-params", "15000,many"])
    assert "not a comma-separated list of ints" in capsys.readouterr().err
    assert not (tmp_path / "pruned").exists()


def test_pareto_front():
    # (cost, score): the third costs more than the second for less; the fourth ties the first's cost
    assert pareto_front([1, 2, 3, 1], [0.5, 0.7, 0.6, 0.4]) == [True, True, False, False]


def test_models_are_timed_and_ranked_at_1_and_2_threads(monkeypatch):
    import facekd.app.report as report
    from facekd.latency import spread

    def latency_record(models, size, threads):
        assert tuple(threads) == (1, 2) and set(models) == {"a", "b"}
        # a clearly faster than b at 1 thread; their spreads overlap at 2
        spreads = {"1": {"a": spread([10, 11, 12, 13]), "b": spread([20, 21, 22, 23])},
                   "2": {"a": spread([8, 9, 10, 11]), "b": spread([9, 10, 11, 12])}}
        return {"size": size, "runs": 4, "threads": {n: {"matmul_gflops": 50.0 * int(n), "models": spreads[n]}
                                                       for n in map(str, threads)}}
    monkeypatch.setattr(report, "latency_record", latency_record)
    entries = [report.Entry(label=name, run_dir=Path(name), stage="distill", arch="resfpn", teacher=False,
                            input_size=64, params=1000, macs=10**6, fscore=0.5, per_class={}, swap_rate=0.0,
                            train_seconds=None, model=torch.nn.Identity()) for name in ("a", "b")]
    report.time_entries(entries)
    assert [(e.latency_rank, e.model) for e in entries] == [({"1": 1, "2": 1}, None), ({"1": 2, "2": 1}, None)]
    table = report._models_table(entries)
    for header in ("CPU latency ms, 1 thread", "speed rank, 1 thread", "CPU latency ms, 2 threads",
                   "speed rank, 2 threads"):
        assert f"<th>{header}</th>" in table
    assert "<td>9.5 <small>[8.8–10.2]</small></td><td>1</td>" in table  # a at 2 threads: median [IQR], rank


def test_a_sweeps_latency_is_labelled_with_the_size_it_was_timed_at(tmp_path):
    from facekd.app.report import _sweeps_section
    from facekd.latency import spread
    timed = {n: spread([1.0, 2.0, 3.0, 4.0]) for n in ("1", "2")}
    sweep = {"targets": [{"run": "params_9000", "params": 9000, "macs": 10**6, "latency": timed,
                          "val_fscore_pruned": 0.1, "val_fscore_finetuned": 0.2}],
             "latency": {"size": 64, "runs": 4, "threads": {n: {"spearman_latency_macs": 1.0} for n in ("1", "2")}}}
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps(sweep))
    (tmp_path / "out").mkdir()
    section = _sweeps_section([tmp_path / "sweep"], tmp_path / "out")
    assert "Latency at the student's input size, 64×64," in section and "Latency at 512" not in section


class Page(HTMLParser):
    """A report page's section ids, image sources and rows of its models table."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.model_rows, self._section = set(), [], 0, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = attrs["id"]
            self.sections.add(self._section)
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "tr" and self._section == "models":
            self.model_rows += 1


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    root, _ = runs
    return write_report([root / "student", root / "sweep"], tmp_path_factory.mktemp("report"), show_progress=False)


def test_report_has_every_section_and_figure(report):
    page = Page(report.read_text())
    assert page.sections == SECTIONS
    assert page.model_rows == 1 + 3  # the header, the student and its two pruned versions
    assert sum(src.startswith("worst/") for src in page.images) == 4  # the sample's 4 val images, k=8
    for src in page.images:
        with Image.open(report.parent / src) as im:
            im.load()  # decodes: not a missing or truncated file


def test_report_names_a_bad_folder_and_writes_nothing(runs, tmp_path, capsys):
    root, _ = runs
    (tmp_path / "empty").mkdir()
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "holds no run" in capsys.readouterr().err
    assert main(["report", str(root / "student"), "--out", str(out), "--focus", "nobody"]) == 2
    assert "no such model" in capsys.readouterr().err
    assert not out.exists()


def test_report_reads_a_cut_off_metrics_file_and_says_so(runs, tmp_path, capsys):
    root, _ = runs
    run = tmp_path / "killed"
    shutil.copytree(root / "student", run)
    # as a run under a time budget logs it, so its curves are drawn against training time
    records = [{**json.loads(line), "budget_used": 0.5} for line in (run / "metrics.jsonl").read_text().splitlines()]
    whole = "".join(json.dumps(r) + "\n" for r in records)
    (run / "metrics.jsonl").write_text(whole + whole[:25])  # killed while writing a record
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    assert "skipped its last line 3, cut off mid-line (25 characters); read 2 records" in err
    assert "cut off mid-line" in (tmp_path / "report" / "index.html").read_text()
    assert [p.name for p in (tmp_path / "report").glob("curves_*.png")] == ["curves_train_seconds.png"]

    lines = whole.splitlines()
    (run / "metrics.jsonl").write_text(lines[0][:25] + "\n" + lines[1] + "\n")  # damaged, not cut off
    assert main(["report", str(run), "--out", str(tmp_path / "other")]) == 2
    assert "metrics.jsonl: line 1 is not a JSON record" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_drawing_is_not_loaded_by_training():
    code = ("import sys, facekd.app.cli, facekd.app.pipeline, facekd.app.report, compress.sweep, distill.train, "
            "teachers.train; print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "False"


def chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"  # a fresh one per run
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium); .ci/run installs it")
def test_report_renders_in_a_browser(report, tmp_path):
    n_images = len(Page(report.read_text()).images)
    dom = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", report.as_uri()).stdout
    assert f'data-figures="{n_images}/{n_images}"' in dom  # every <img> decoded in the browser
    shot = tmp_path / "report.png"
    chromium(tmp_path, "--window-size=1280,3000", f"--screenshot={shot}", report.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (3000, 1280, 3)
    assert (pixels.min(2) < 200).mean() > 0.05  # text and figures, not a blank page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # plots and photos, not a few boxes

    broken = tmp_path / "broken"  # the check above can fail: the same page with one figure gone
    shutil.copytree(report.parent, broken)
    (broken / "pareto.png").unlink()
    dom = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", (broken / "index.html").as_uri()).stdout
    assert f'data-figures="{n_images - 1}/{n_images}"' in dom


@pytest.mark.parametrize("params", [[1.40e6, 1.55e6, 1.80e6], [8e3, 2e4, 4e5, 1.8e6]])
def test_the_parameter_axis_labels_do_not_overlap(params):
    """Issue 28, friction 11: models spanning a narrow range got overlapping tick labels."""
    from facekd.app.report import _log_x_axis, _pyplot
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.8))  # one panel of the Pareto figure
    ax.plot(params, [0.5] * len(params), "o")
    _log_x_axis(ax)
    fig.canvas.draw()
    low, high = ax.get_xlim()
    boxes = sorted(t.get_window_extent().x0 for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True)
                   if t.get_text() and t.get_visible() and low <= t.get_position()[0] <= high)
    widths = {t.get_window_extent().x0: t.get_window_extent().width for t in ax.get_xticklabels()
              + ax.get_xticklabels(minor=True) if t.get_text()}
    plt.close(fig)
    assert len(boxes) >= 2, "at least two labelled ticks"
    assert all(b - a > widths[a] for a, b in zip(boxes, boxes[1:])), "labels overlap"


def test_the_report_header_counts_in_english(runs, tmp_path):
    """Issue 28, friction 11: "1 models from 1 run folder(s)"; and the page has a margin."""
    root, _ = runs
    page = write_report([root / "student"], tmp_path / "one", show_progress=False).read_text()
    assert "1 model from 1 run folder," in page
    assert "padding:0 24px" in page


# Issue 34, fault 6: the page's figures and legends, and its input checks (faults 14, 15)

def _entry(label: str, fscore: float, params: int, records: list, teacher: bool = False):
    from facekd.app.report import Entry
    from facekd.latency import spread
    return Entry(label=label, run_dir=Path(label), stage="teacher" if teacher else "distill", arch="tiny",
                 teacher=teacher, input_size=64, params=params, macs=10**6, fscore=fscore, per_class={"skin": fscore},
                 swap_rate=0.0, train_seconds=None, records=records,
                 latency={"1": spread([params / 1e4] * 3)})  # a larger model is slower


@pytest.fixture
def drawn(monkeypatch):
    """drawn(draw, *args): the matplotlib figure a report draw_* function made, not saved."""
    import facekd.app.report as report
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or path.name)

    def draw(fn, *args):
        fn(*args, Path("unused.png"))
        return figures[-1]
    yield draw
    report._pyplot().close("all")


def _legends(fig) -> list:
    """Every legend of a figure: its own and its panels'."""
    return [legend for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if legend]


def _legend_texts(fig) -> list:
    return [t for legend in _legends(fig) for t in legend.get_texts()]


def test_curves_keep_one_colour_per_run_and_draw_a_single_point(drawn):
    """A teacher and a distilled student: only the student logs loss/cwd, and its one loss/kd
    record was a point without a line; its cwd curve took the teacher's legend colour."""
    from facekd.app.report import draw_curves
    teacher = _entry("teacher", 0.6, 10**6, [{"epoch": e, "val_fscore": 0.5, "loss/ce": 1.0} for e in range(3)], True)
    student = _entry("distill", 0.5, 10**4, [{"epoch": e, "val_fscore": 0.4, "loss/cwd": 2.0 - e} for e in range(3)]
                     + [{"epoch": 3, "loss/kd": 0.7}])
    fig = drawn(draw_curves, [teacher, student], "epoch")
    legend = {t.get_text(): h.get_color() for legend in _legends(fig)
              for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert set(legend) == {"teacher", "distill"} and legend["teacher"] != legend["distill"]
    panels = {ax.get_title(): ax for ax in fig.axes}
    for key in ("val_fscore", "loss/cwd", "loss/kd", "loss/ce"):
        for line in panels[key].get_lines():
            assert line.get_color() == legend[line.get_label()], (key, line.get_label())
    kd, = panels["loss/kd"].get_lines()
    assert len(kd.get_xdata()) == 1 and kd.get_marker() not in ("", "None", None)
    assert all(t.get_fontsize() >= 10 for t in _legend_texts(fig))


def test_the_pareto_legend_lists_dominated_points_only_when_there_are_some(drawn):
    from facekd.app.report import draw_pareto
    front = [_entry("small", 0.5, 10**4, []), _entry("large", 0.7, 10**6, [])]
    labels = [t.get_text() for t in _legend_texts(drawn(draw_pareto, front))]
    assert "dominated" not in labels and "Pareto-optimal" in labels
    labels = [t.get_text() for t in _legend_texts(drawn(draw_pareto, front + [_entry("worse", 0.4, 10**5, [])]))]
    assert "dominated" in labels
    assert all(t.get_fontsize() >= 10 for t in _legend_texts(drawn(draw_pareto, front)))


def test_the_per_class_legend_is_readable_and_tells_many_runs_apart(drawn):
    from facekd.app.report import draw_per_class
    entries = [_entry(f"run{i}", 0.5, 10**4, []) for i in range(12)]  # more runs than colours
    fig = drawn(draw_per_class, entries, ["skin"])
    assert all(t.get_fontsize() >= 10 for t in _legend_texts(fig))
    looks = {(tuple(bar.get_facecolor()), bar.get_hatch()) for bar in fig.axes[0].patches}
    assert len(looks) == len(entries)


class Chips(HTMLParser):
    """The class legend's chips: each text, with the ink and the background it is drawn in."""

    def __init__(self, text: str, ink: str):
        super().__init__()
        self.texts, self._looks = [], [{"color": ink, "background": "#fff"}]  # the page's own
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        rules = dict(rule.split(":", 1) for rule in (dict(attrs).get("style") or "").split(";") if ":" in rule)
        self._looks.append({**self._looks[-1], **{k: v for k, v in rules.items() if k in ("color", "background")}})

    def handle_endtag(self, tag):
        self._looks.pop()

    def handle_data(self, data):
        if data.strip():
            self.texts.append((data.strip(), self._looks[-1]["color"], self._looks[-1]["background"]))


def _contrast(ink: tuple, background: tuple) -> float:
    """WCAG 2's contrast ratio of two sRGB colours."""
    def luminance(rgb):
        lin = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    high, low = sorted((luminance(ink), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _rgb(css: str) -> tuple:
    """#rgb, #rrggbb or rgb(r,g,b) as three 0..255 values."""
    css = css.strip()
    if css.startswith("#"):
        digits = css[1:] if len(css) == 7 else "".join(2 * d for d in css[1:])
        return tuple(int(digits[i:i + 2], 16) for i in (0, 2, 4))
    return tuple(int(v) for v in css[css.index("(") + 1:-1].split(","))


def test_every_class_chip_is_readable():
    """The chips for hair (13) and hat (14) put black text on magenta and teal, under 4.5:1."""
    from facekd.app.report import CSS, _legend
    from facekd.labels import CLASS_NAMES
    body = dict(rule.split(":", 1) for rule in CSS.split("{", 1)[1].split("}")[0].split(";"))
    chips = Chips(_legend(), body["color"])
    assert [text for text, _, _ in chips.texts] == [f"{c} {name}" for c, name in enumerate(CLASS_NAMES)]
    for text, ink, background in chips.texts:
        assert _contrast(_rgb(ink), _rgb(background)) >= 4.5, text


def test_report_checks_its_out_before_scoring(runs, tmp_path, capsys, monkeypatch):
    """Fault 14: `report RUN --out myfile.txt` scored every model, then failed "Not a directory"."""
    import facekd.app.report as report

    def no_scoring(*args, **kwargs):
        raise AssertionError("--out should have been refused before any model was scored")
    monkeypatch.setattr(report, "score_models", no_scoring)
    root, _ = runs
    (tmp_path / "myfile.txt").write_text("mine\n")
    assert main(["report", str(root / "student"), "--out", str(tmp_path / "myfile.txt")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'myfile.txt'}: is a file" in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "myfile.txt").read_text() == "mine\n"


def test_a_run_given_twice_is_one_model_from_one_folder(runs, tmp_path):
    """Fault 15: `report r r` read "1 model from 2 run folders"."""
    root, _ = runs
    student = root / "student"
    page = write_report([student, student, student / "best.pt"], tmp_path / "twice", show_progress=False).read_text()
    assert "1 model from 1 run folder," in page
