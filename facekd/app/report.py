"""`facekd report RUN [RUN ...] --out DIR`: one page, DIR/index.html, that compares every
model found in the given runs (teacher, distill, prune, sweep or pipeline folders: any
folder with a best.pt in it or below it) and opens offline, its figures PNG files beside it.

Every model is scored afresh on one val split (the runs' own, from config.json, or --data),
so the numbers on the page are comparable whatever the runs were validated on when they
trained. Everything is read and scored before anything is written: bad input leaves DIR as
it was. matplotlib is imported only while drawing, so training never loads it.
"""

from __future__ import annotations

import html
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from facekd import distributed
from facekd.files import check_output_folder, load_checkpoint
from facekd.models import is_teacher, load_model
from teachers.ensemble import model_or_ensemble
from facekd.challenge import PARAM_LIMIT
from facekd.data import CachedSplit, load_split
from facekd.evaluation import evaluate
from facekd.labels import CLASS_NAMES, FLIP_PERMUTATION, PALETTE, colourise
from facekd.latency import THREADS, latency_record, rank_groups
from facekd.metric import confusion_matrices, image_fscores, per_class_f1
from facekd.profile import count_macs, model_cost

MISSED_F1 = 0.5  # a class present in an image counts as missed there below this F1
# left/right class pairs, as the flip augmentation swaps them
PAIRS = [(c, FLIP_PERMUTATION[c]) for c in range(len(CLASS_NAMES)) if FLIP_PERMUTATION[c] > c]


@dataclass
class Entry:
    """One model: where it came from, what it costs and how it scores on val."""
    label: str
    run_dir: Path
    stage: str
    arch: str
    teacher: bool
    input_size: int
    params: int
    macs: int                         # at 512x512, the challenge's resolution
    fscore: float
    per_class: dict
    swap_rate: float
    train_seconds: float | None
    records: list = field(default_factory=list)
    preds: torch.Tensor | None = None
    shipped: bool = False
    model: torch.nn.Module | None = None  # kept until every model is timed side by side
    latency: dict | None = None           # thread count -> spread of one image at the model's input size
    latency_rank: dict | None = None      # thread count -> rank; models whose spreads overlap share one

    @property
    def latency_ms(self) -> float:
        """The median at 1 thread: the latency the Pareto plot places the model at."""
        return self.latency["1"]["median_ms"]


def distinct_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The paths with each file or folder kept once, as first given: `report r r`, or `r` and
    `./r`, name one run folder, whose model the page must count and show once."""
    kept: dict[Path, Path] = {}
    for path in map(Path, paths):
        kept.setdefault(path.resolve(), path)
    return list(kept.values())


def find_runs(run_dirs: Sequence[str | Path]) -> list[tuple[str, Path]]:
    """(label, run folder) for every best.pt in or below each given folder, labelled by its
    path from that folder's name (pipe/teacher, sweep/params_1400000). A checkpoint file given
    itself (an int8 model from `facekd quantize`) is its own run, read from the folder it is in."""
    runs, taken = [], set()  # taken: the checkpoints found so far, resolved
    for top in map(Path, run_dirs):
        if top.is_file():
            if top.resolve() not in taken:
                taken.add(top.resolve())
                runs.append((f"{top.resolve().parent.name}/{top.name}", top))
            continue
        if not top.is_dir():
            raise FileNotFoundError(f"{top}: not a folder or a checkpoint file")
        found = sorted(p.parent for p in top.rglob("best.pt"))
        if not found:
            raise ValueError(f"{top}: holds no run (no best.pt in it or below it)")
        name = top.resolve().name
        for d in found:
            # a run given both alone and inside its pipeline (or as its best.pt) is one model
            if _checkpoint(d).resolve() not in taken:
                taken.add(_checkpoint(d).resolve())
                runs.append((name if d == top else f"{name}/{d.relative_to(top).as_posix()}", d))
    seen: dict[str, int] = {}
    for i, (label, d) in enumerate(runs):  # two folders of the same name given side by side
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            runs[i] = (f"{label} ({seen[label]})", d)
    return runs


def _folder(run: Path) -> Path:
    """Where a run's config.json, metrics.jsonl and result.json are: the run, or the folder of a checkpoint file."""
    return run.parent if run.is_file() else run


def _checkpoint(run: Path) -> Path:
    return run if run.is_file() else run / "best.pt"


def read_metrics(path: Path) -> tuple[list[dict], str | None]:
    """The whole records of a metrics.jsonl and a note on what was skipped. A last line cut
    off mid-write (a killed run) is skipped; a bad line anywhere else is an error."""
    if not path.is_file():
        return [], None
    lines = path.read_text().split("\n")
    records, note = [], None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif n == len(lines):  # no newline after it: the writer stopped mid-line
            note = (f"{path}: skipped its last line {n}, cut off mid-line ({len(line)} characters); "
                    f"read {len(records)} records")
        else:
            raise ValueError(f"{path}: line {n} is not a JSON record: {line[:60]!r}")
    return records, note


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _val_root(runs: list[tuple[str, Path]], data_root) -> Path:
    if data_root is not None:
        return Path(data_root)
    roots: dict[Path, Path] = {}
    for _, run in runs:
        config = _folder(run) / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{config}: missing, so its val split is unknown; pass --data")
        root = _read_json(config).get("data_root")
        if not root:
            raise ValueError(f"{config}: names no data_root; pass --data")
        root = Path(root)
        roots.setdefault((root / "val").resolve(), root)  # a pipeline's audited copy links the same val
    if len(roots) > 1:
        raise ValueError(f"the runs were validated on different val splits ({', '.join(map(str, roots))}); "
                         f"pass --data to score them all on one")
    return next(iter(roots.values()))


def _shipped(top: Path) -> Path | None:
    """The run a pipeline exported, from its summary.json."""
    summary = top / "summary.json"
    if not summary.is_file():
        return None
    source = _read_json(summary).get("stages", {}).get("solution", {}).get("from")
    return top / source if source else None


def score_models(runs: list[tuple[str, Path]], run_dirs, data_root=None,
                 show_progress: bool = True) -> tuple[list[Entry], list[str], Path, CachedSplit, dict]:
    """(entries, notes on skipped input, val root, val split, latency record): every model's
    cost and val scores, and its latency timed beside all the others."""
    metrics = {d: read_metrics(_folder(d) / "metrics.jsonl") for _, d in runs}
    notes = [note for _, note in metrics.values() if note]
    root = _val_root(runs, data_root)
    # every checkpoint read before the val split is decoded: a bad file costs nothing
    ckpts = {run: load_checkpoint(_checkpoint(run)) for _, run in runs}
    val = load_split(root, "val", None, show_progress=show_progress)
    shipped = {_shipped(Path(top)) for top in run_dirs}
    device = distributed.pick_device()
    entries = []
    for label, run in tqdm(runs, desc="report: scoring models", disable=not show_progress):
        ckpt = ckpts.pop(run)  # let each go once its model is built
        model = load_model(ckpt, _checkpoint(run))
        model.to(distributed.device_for([model], device))
        result = _folder(run) / "result.json"
        entries.append(_entry(label, run, model, ckpt.get("stage", "?"), ckpt["model_cfg"]["arch"],
                              is_teacher(ckpt["model_cfg"]), ckpt.get("config", {}).get("flip_tta", True), val,
                              train_seconds=_read_json(result).get("train_seconds") if result.is_file() else None,
                              records=metrics[run][0], shipped=run in shipped))
    for label, run, paths in _ensembles(runs):
        model, _ = model_or_ensemble(paths, device)
        entries.append(_entry(label, run, model, "ensemble", "ensemble", True, True, val))
    for note in notes:
        print(f"facekd report: warning: {note}", file=sys.stderr)
    timing = time_entries(entries)
    return entries, notes, root, val, timing


def _entry(label: str, run: Path, model, stage: str, arch: str, teacher: bool, flip_tta: bool, val: CachedSplit,
           train_seconds: float | None = None, **extra) -> Entry:
    """A model's Entry: its size and its val scores; time_entries adds its latency once every
    model is loaded."""
    summary, preds = evaluate(model, val, model.input_size, flip_tta, return_preds=True)
    cost = model_cost(model, latency=False)
    return Entry(label=label, run_dir=run, stage=stage, arch=arch, teacher=teacher, input_size=model.input_size,
                 params=cost["params"], macs=count_macs(model, 512), fscore=summary["fscore"],
                 per_class=summary["per_class"], swap_rate=summary["left_right_swap_rate"], preds=preds,
                 train_seconds=train_seconds, model=model, **extra)


def time_entries(entries: list[Entry]) -> dict:
    """Time every model side by side at 1 and 2 threads, each at its own input size, on the
    CPU; set each entry's latency spread and rank at each thread count, and drop the model.
    Returns the latency record."""
    record = latency_record({e.label: e.model.cpu() for e in entries}, {e.label: e.input_size for e in entries},
                            threads=THREADS)
    for e in entries:
        e.latency, e.latency_rank, e.model = {}, {}, None
    for n, at in record["threads"].items():
        ranks = rank_groups(at["models"])
        for e in entries:
            e.latency[n], e.latency_rank[n] = at["models"][e.label], ranks[e.label]
    return record


def _ensembles(runs: list[tuple[str, Path]]) -> list[tuple[str, Path, list[str]]]:
    """(label, run, member paths) for each distinct ensemble teacher the runs' config.json name,
    so that an ensemble, which no best.pt holds, is scored beside the students it taught."""
    found, seen = [], set()
    for label, run in runs:
        config = _folder(run) / "config.json"
        teacher = _read_json(config).get("teacher") if config.is_file() else None
        if isinstance(teacher, list) and tuple(sorted(teacher)) not in seen:
            seen.add(tuple(sorted(teacher)))
            found.append((f"{label}: teacher ensemble of {len(teacher)}", run, teacher))
    return found


def pick_focus(entries: list[Entry], focus: str | None) -> Entry:
    """The named model, or else the best one that could ship: a student under the limit."""
    if focus is not None:
        return next(e for e in entries if e.label == focus)
    eligible = [e for e in entries if not e.teacher and e.params < PARAM_LIMIT] or entries
    return max(eligible, key=lambda e: e.fscore)


def pareto_front(costs: list[float], scores: list[float]) -> list[bool]:
    """True for each model that no other model matches or beats on both cost and score."""
    return [not any(c2 <= c and s2 >= s and (c2 < c or s2 > s) for c2, s2 in zip(costs, scores))
            for c, s in zip(costs, scores)]


# ---- figures ---------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt
    return plt


FIGURE_TEXT = 10  # legend text, in points: the figures are shown scaled down to the page's width


def run_styles(labels: Sequence[str]) -> dict[str, dict]:
    """One look per model or run, the same in every panel of a figure: matplotlib's colour
    cycle restarts in each panel, so a run drawn alone in one panel would take the colour
    the legend gives the first run. Ten colours, then each again with another line style
    (bars: hatching), so that no two runs look alike."""
    line_styles, hatches = ("-", "--", ":", "-."), ("", "//", "..", "xx")
    return {label: {"color": f"C{i % 10}", "linestyle": line_styles[i // 10 % 4], "hatch": hatches[i // 10 % 4]}
            for i, label in enumerate(labels)}


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path.name


def draw_pareto(entries: list[Entry], path: Path) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    scores = [e.fscore for e in entries]
    for ax, key, xlabel in ((axes[0], "params", "parameters"), (axes[1], "latency_ms", "CPU latency (ms)")):
        costs = [getattr(e, key) for e in entries]
        front = pareto_front(costs, scores)
        if not all(front):  # the legend names only what the plot shows
            ax.scatter([c for c, f in zip(costs, front) if not f], [s for s, f in zip(scores, front) if not f],
                       c="0.6", label="dominated")
        points = sorted((c, s) for c, s, f in zip(costs, scores, front) if f)
        ax.plot(*zip(*points), "o-", c="tab:red", drawstyle="steps-post", label="Pareto-optimal")
        for e, c in zip(entries, costs):
            ax.annotate(e.label, (c, e.fscore), fontsize=FIGURE_TEXT - 1, xytext=(4, 3), textcoords="offset points")
        if key == "params":
            ax.axvline(PARAM_LIMIT, ls="--", c="k", lw=1, label=f"limit {PARAM_LIMIT:,}")
        _log_x_axis(ax)
        ax.set_xlabel(xlabel + " (log scale)")
        ax.set_ylabel("val F-score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=FIGURE_TEXT, loc="lower right")
    return _save(fig, path)


def _log_x_axis(ax) -> None:
    """A log x axis whose labels cannot overlap, in engineering units (20k, 1.5M): at 1, 2 and 5
    of each decade, or, over less than a decade, at four round values. matplotlib's own labels
    every minor tick of a narrow range, and its 1.4x10^6-style labels then overlap."""
    from matplotlib import ticker
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    ax.xaxis.set_major_locator(ticker.MaxNLocator(4) if high / low < 10 else ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def draw_per_class(entries: list[Entry], classes: list[str], path: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(10, 0.25 * len(classes) * len(entries) + 4), 4.5))
    width = 0.8 / len(entries)
    x = np.arange(len(classes))
    styles = run_styles([e.label for e in entries])
    for i, e in enumerate(entries):
        ax.bar(x + (i - (len(entries) - 1) / 2) * width, [e.per_class.get(c, 0) for c in classes], width,
               label=e.label, color=styles[e.label]["color"], hatch=styles[e.label]["hatch"])
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set_ylabel("val F1")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=FIGURE_TEXT, ncol=min(4, len(entries)), loc="upper right")
    return _save(fig, path)


def draw_confusion(confusion: torch.Tensor, title: str, path: Path) -> str:
    plt = _pyplot()
    counts = confusion.double()
    rows = counts.sum(1, keepdim=True)
    norm = torch.where(rows > 0, counts / rows.clamp(min=1), torch.nan).numpy()
    fig, ax = plt.subplots(figsize=(12, 10.5))  # cells large enough for 9 pt numbers at the page's width
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    n = len(CLASS_NAMES)
    for i in range(n):
        for j in range(n):
            if norm[i, j] >= 0.01:
                ax.text(j, i, f"{norm[i, j]:.2f}".lstrip("0"), ha="center", va="center",
                        fontsize=9, color="white" if norm[i, j] > 0.5 else "black")
    for a, b in PAIRS:  # each left/right pair's 2x2 block: its off-diagonal cells are side swaps
        ax.add_patch(plt.Rectangle((min(a, b) - 0.5, min(a, b) - 0.5), 2, 2, fill=False, ec="tab:red", lw=2))
    ax.set_xticks(range(n), CLASS_NAMES, rotation=90, fontsize=10)
    ax.set_yticks(range(n), CLASS_NAMES, fontsize=10)
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        for c, tick in enumerate(labels):
            if FLIP_PERMUTATION[c] != c:
                tick.set_color("tab:red")
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth (rows sum to 1; blank: absent from val)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def _x_axis(records: list[dict]) -> str:
    """Budgeted runs are read against training time, the rest against epochs."""
    return "train_seconds" if records and all("budget_used" in r for r in records) else "epoch"


def draw_curves(entries: list[Entry], axis: str, path: Path) -> str:
    plt = _pyplot()
    runs = [e for e in entries if e.records and _x_axis(e.records) == axis]
    keys = ["val_fscore"] + sorted({k for e in runs for r in e.records for k in r if k.startswith("loss/")})
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    styles = run_styles([e.label for e in runs])
    for ax, key in zip(axes.flat, keys):
        for e in runs:
            points = [(r[axis], r[key]) for r in e.records if key in r and axis in r]
            # a line needs two points: a run that logged one (a single epoch) is a marker
            marker = "o" if key == "val_fscore" or len(points) == 1 else ""
            if points:
                ax.plot(*zip(*points), marker=marker, ms=4, color=styles[e.label]["color"],
                        linestyle=styles[e.label]["linestyle"], label=e.label)
        ax.set_title(key, fontsize=FIGURE_TEXT + 1)
        ax.set_xlabel("training time (s)" if axis == "train_seconds" else "epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    # one legend for the figure, listing every run in the look it has in every panel
    handles = [plt.Line2D([], [], color=styles[e.label]["color"], linestyle=styles[e.label]["linestyle"],
                          label=e.label) for e in runs]
    fig.legend(handles=handles, fontsize=FIGURE_TEXT, loc="outside upper center", ncol=min(4, len(runs)))
    return _save(fig, path)


def draw_sweep(sweep: dict, path: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    rows = sweep["targets"]
    params = [r["params"] for r in rows]
    ax.plot(params, [r["val_fscore_pruned"] for r in rows], "x--", c="0.5", label="right after pruning")
    ax.plot(params, [r["val_fscore_finetuned"] for r in rows], "o-", c="tab:blue", label="after fine-tuning")
    if "student_size" in sweep:
        ax.plot([sweep["student_size"]["params"]], [sweep["student_val_fscore"]], "*", ms=12, c="tab:green",
                label="the student")
    ax.axvline(PARAM_LIMIT, ls="--", c="k", lw=1, label=f"limit {PARAM_LIMIT:,}")
    ax.set_xlabel("parameters")
    ax.set_ylabel("val F-score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=FIGURE_TEXT)
    return _save(fig, path)


def worst_strip(image: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor, size: int = 256) -> Image.Image:
    """Image | ground truth | prediction | errors (wrong pixels red over the dimmed image)."""
    rgb = image.permute(1, 2, 0).numpy()
    wrong = (pred != gt).numpy()
    errors = (0.35 * rgb.mean(2, keepdims=True)).repeat(3, 2).astype(np.uint8)
    errors[wrong] = (230, 30, 30)
    masks = colourise(torch.stack([gt, pred])).permute(0, 2, 3, 1).numpy()
    panels = [Image.fromarray(rgb).resize((size, size), Image.BILINEAR)]
    panels += [Image.fromarray(a).resize((size, size), Image.NEAREST) for a in (masks[0], masks[1], errors)]
    strip = Image.new("RGB", (4 * size + 12, size), "white")
    for i, p in enumerate(panels):
        strip.paste(p, (i * (size + 4), 0))
    return strip


# ---- the page --------------------------------------------------------------------------

CSS = """body{font:14px system-ui,sans-serif;margin:24px auto;padding:0 24px;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%}.note{color:#a40}
.chip{display:inline-block;padding:2px 8px 2px 4px;margin:2px;border:1px solid #bbb;font-size:14px}
.swatch{display:inline-block;width:1.1em;height:1.1em;margin-right:5px;vertical-align:-0.2em;border:1px solid #666}"""

# Lets a headless browser (and the test) confirm that every figure decoded: after load,
# <body data-figures="loaded/total">.
CHECK_SCRIPT = """<script>addEventListener("load", () => { const imgs = [...document.images];
document.body.dataset.figures = imgs.filter(i => i.complete && i.naturalWidth > 0).length + "/" + imgs.length; });
</script>"""


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    """An HTML table; the first `left` columns are text, left-aligned."""
    def cell(tag, i, v):
        return f"<{tag}{' class=l' if i < left else ''}>{v}</{tag}>"
    head = "".join(cell("th", i, html.escape(h)) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _models_table(entries: list[Entry]) -> str:
    threads = [(n, _counted(int(n), "thread")) for n in entries[0].latency]
    rows = []
    for e in sorted(entries, key=lambda e: -e.fscore):
        flags = (" (shipped)" if e.shipped else "") + (" (over the limit)" if e.params >= PARAM_LIMIT else "")
        timed = [cell for n, _ in threads for cell in (_spread_cell(e.latency[n]), str(e.latency_rank[n]))]
        rows.append([html.escape(e.label) + flags, e.stage, e.arch, f"{e.params:,}", f"{e.macs / 1e9:.3f}",
                     str(e.input_size), *timed, f"{e.fscore:.4f}",
                     "—" if e.train_seconds is None else f"{e.train_seconds / 60:.1f}", html.escape(str(e.run_dir))])
    timed = [h for _, counted in threads for h in (f"CPU latency ms, {counted}", f"speed rank, {counted}")]
    return _table(["model", "stage", "arch", "params", "GMACs @512²", "input side", *timed, "val F",
                   "train loop min", "run"], rows, left=3)


def _spread_cell(s: dict) -> str:
    return f"{s['median_ms']:.1f} <small>[{s['q1_ms']:.1f}–{s['q3_ms']:.1f}]</small>"


def _per_class_table(entries: list[Entry], classes: list[str]) -> str:
    best = {c: max(e.per_class.get(c, 0) for e in entries) for c in classes}
    rows = [[html.escape(e.label)] + [(f"<b>{e.per_class[c]:.3f}</b>" if e.per_class[c] == best[c] > 0 else
                                       f"{e.per_class[c]:.3f}") if c in e.per_class else "—" for c in classes]
            for e in entries]
    return _table(["model"] + classes, rows)


def _legend() -> str:
    """A chip per class: a swatch of its mask colour, then its id and name in the page's own
    ink. Text drawn on the colour itself could not be read on every colour of the palette:
    black on hair's magenta and on hat's teal (ids 13 and 14) was below 4.5:1 contrast."""
    chips = []
    for c, name in enumerate(CLASS_NAMES):
        r, g, b = PALETTE[3 * c:3 * c + 3]
        chips.append(f'<span class=chip><span class=swatch style="background:rgb({r},{g},{b})"></span>'
                     f'{c} {name}</span>')
    return "".join(chips)


def _header(entries: list[Entry], run_dirs, val: CachedSplit, root: Path, timing: dict) -> str:
    """The page's title and what it measured how."""
    matmul = " and ".join(f"{at['matmul_gflops']:.1f} GFLOP/s at {_counted(int(n), 'thread')}"
                          for n, at in timing["threads"].items())
    return (f"<h1>facekd report</h1><p>{_counted(len(entries), 'model')} from "
            # a checkpoint file given beside its own folder is that one run folder
            f"{_counted(len({_folder(Path(p)).resolve() for p in run_dirs}), 'run folder')}, each scored on "
            f"the {len(val)} masked val images of <code>{html.escape(str(root))}</code>; latency is one image on "
            f"this machine's CPU at the model's input size, at 1 and at 2 threads, every model timed in the same "
            f"{timing['runs']} interleaved rounds: median [interquartile range]. Models share a speed rank where "
            f"their ranges overlap, since the timing cannot order them. The machine's fp32 matmul (2048³) ran at "
            f"{matmul}.</p>")


def _worst_section(chosen: Entry, val: CachedSplit, f1: torch.Tensor, present: torch.Tensor, worst: int,
                   out: Path) -> str:
    """The `worst` val images of the chosen model, each as a strip, with the classes it missed."""
    image_scores = image_fscores(f1, present)
    rows = []
    for rank, i in enumerate(image_scores.argsort()[:worst].tolist(), 1):
        name = f"worst/{rank:02d}.png"
        worst_strip(val.images[i], val.masks[i].long(), chosen.preds[i].long()).save(out / name)
        missed = sorted((float(f1[i, c]), CLASS_NAMES[c]) for c in range(len(CLASS_NAMES))
                        if present[i, c] and f1[i, c] < MISSED_F1)
        rows.append(f'<tr><td class=l><b>{html.escape(val.stems[i])}</b><br>F {float(image_scores[i]):.4f}<br>'
                    f'missed: {", ".join(f"{n} {s:.2f}" for s, n in missed) or "none"}</td>'
                    f'<td><img src="{name}" alt="{html.escape(val.stems[i])}"></td></tr>')
    return (f'<section id="worst"><h2>The {len(rows)} worst val images of {html.escape(chosen.label)}</h2>'
            f'<p>image, ground truth, prediction, errors in red; "missed": classes in the image with F1 under '
            f'{MISSED_F1}.</p><p>{_legend()}</p><table>{"".join(rows)}</table></section>')


def _curves_section(entries: list[Entry], out: Path) -> str:
    """Every run's learning curves, one figure per x axis."""
    axes = sorted({_x_axis(e.records) for e in entries if e.records})
    curves = "".join(f'<img src="{draw_curves(entries, a, out / f"curves_{a}.png")}" alt="learning curves">'
                     for a in axes)
    return (f'<section id="curves"><h2>Learning curves</h2><p>From each run\'s metrics.jsonl: val F and every '
            f'loss term, against epoch, or against training time for budgeted runs.</p>'
            f'{curves or "<p>No run has a metrics.jsonl.</p>"}</section>')


def _sweeps_section(run_dirs, out: Path) -> str:
    """Each pruning sweep found under run_dirs: its table and plot."""
    sweeps = [(p, _read_json(p)) for top in map(Path, run_dirs) if top.is_dir()
              for p in sorted(top.rglob("sweep.json"))]
    if not sweeps:
        return ""
    parts = ['<section id="sweeps"><h2>Pruning sweeps</h2>']
    for n, (path, sweep) in enumerate(sweeps):
        rows = [[r["run"], f"{r['params']:,}", f"{r['macs'] / 1e9:.3f}",
                 *(_spread_cell(r["latency"][n]) for n in ("1", "2")),
                 f"{r['val_fscore_pruned']:.4f}", f"{r['val_fscore_finetuned']:.4f}"] for r in sweep["targets"]]
        rho = ", ".join(f"{at['spearman_latency_macs']:.2f} at {n} thread(s)"
                        for n, at in sweep["latency"]["threads"].items())
        size = sweep["latency"]["size"]
        parts.append(f"<h3>{html.escape(str(path))}</h3><p>Latency at the student's input size, {size}×{size}, "
                     f"timed side by side with the student; rank correlation with MACs: {rho}.</p>" + _table(
            ["run", "params", "GMACs @512²", "ms, 1 thread", "ms, 2 threads", "val F pruned", "val F fine-tuned"],
            rows)
            + f'<img src="{draw_sweep(sweep, out / f"sweep_{n}.png")}" alt="sweep">')
    parts.append("</section>")
    return "".join(parts)


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, data_root: str | Path | None = None, *,
                 focus: str | None = None, worst: int = 8, show_progress: bool = True) -> Path:
    """Score every model in run_dirs on one val split and write out_dir/index.html with its
    figures; returns the page's path. data_root=None takes the val split the runs trained with."""
    if worst < 1:
        raise ValueError(f"--worst {worst}: show at least one image")
    check_output_folder(out_dir)  # before the minutes of scoring, not after
    run_dirs = distinct_paths(run_dirs)
    runs = find_runs(run_dirs)
    if focus is not None and focus not in (labels := [label for label, _ in runs]):
        raise ValueError(f"--focus {focus!r}: no such model; choose from {', '.join(labels)}")
    entries, notes, root, val, timing = score_models(runs, run_dirs, data_root, show_progress)
    chosen = pick_focus(entries, focus)
    cm = confusion_matrices(chosen.preds, val.masks)
    f1, present = per_class_f1(cm)
    classes = [c for c in CLASS_NAMES if any(c in e.per_class for e in entries)]

    # everything is read and scored: from here on, only writing
    out = Path(out_dir)
    (out / "worst").mkdir(parents=True, exist_ok=True)
    parts = [_header(entries, run_dirs, val, root, timing)]
    if notes:
        parts.append('<section id="notes"><h2>Skipped input</h2>'
                     + "".join(f'<p class=note>{html.escape(n)}</p>' for n in notes) + "</section>")
    parts.append(f'<section id="models"><h2>Models</h2>{_models_table(entries)}</section>')
    parts.append(f'<section id="pareto"><h2>Pareto front</h2><p>val F against parameters and against CPU latency; '
                 f'red: the models no other model beats on both; dashed: the challenge limit of {PARAM_LIMIT:,} '
                 f'parameters.</p><img src="{draw_pareto(entries, out / "pareto.png")}" alt="Pareto plot"></section>')
    parts.append(f'<section id="per-class"><h2>Per-class F1</h2><img src="'
                 f'{draw_per_class(entries, classes, out / "per_class.png")}" alt="per-class F1">'
                 f'{_per_class_table(entries, classes)}</section>')
    confusion_png = draw_confusion(cm.sum(0)[:, :len(CLASS_NAMES)], f"{chosen.label}: row-normalised confusion on val",
                                   out / "confusion.png")
    parts.append(f'<section id="confusion"><h2>Confusion matrix of {html.escape(chosen.label)}</h2><p>Red boxes: '
                 f'the left/right pairs; their off-diagonal cells are side swaps ({100 * chosen.swap_rate:.2f}% of '
                 f'l_/r_ pixels).</p><img src="{confusion_png}" alt="confusion matrix"></section>')
    parts.append(_worst_section(chosen, val, f1, present, worst, out))
    parts.append(_curves_section(entries, out))
    parts.append(_sweeps_section(run_dirs, out))
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>facekd report</title><style>{CSS}</style>'
            f'</head><body>{"".join(parts)}{CHECK_SCRIPT}</body></html>\n')
    (out / "index.html").write_text(page)
    return out / "index.html"
