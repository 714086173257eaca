"""`facekd pipeline`: label audit -> teacher -> distilled student -> pruned and fine-tuned
student -> exported solution -> submission zip, each stage in its own sub-run of RUN.

The audit stage writes a copy of the data whose mirrored training masks are fixed
(facekd/audit.py) and every later stage trains on that copy; val and test are linked as they are.

A stage that finished (summary.json records it) is skipped, and one that was killed resumes
from its last.pt, so re-running with --resume continues where a pipeline stopped.

With --prune-from wide the student stage distils the over-limit WIDE_STUDENT and the prune
stage cuts it to under the challenge's parameter limit.

With --budget MINUTES the training stages share the pipeline's wall time (BUDGET_SHARES);
summary.json records each stage's planned and actual time, epochs and images seen.

--teacher says what the student stages learn from. "train" (the default) trains a teacher in
the teacher stage. CHECKPOINT (repeated for an ensemble) distils from a teacher trained earlier:
its cost is then paid once for any number of pipelines. "none" trains the student from labels
alone, which on two CPU cores beat every teacher trained within the same budget
(docs/RESULTS.md, "Budgets and the pipeline"). With either of the last two the teacher stage
trains nothing and a --budget goes to the student stages alone.

--finetune-kd says whether the prune stage fine-tunes under the teacher. With "auto" (the
default) it does so only while the teacher scored above the distilled student on val: a student
that has passed its teacher is held back by its targets (docs/RESULTS.md, "Does distillation
pay?").
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from compress.prune import PruneSettings, PruneTarget
from compress.train import prune_and_finetune
from distill.teacher import frozen_teacher, teacher_paths, teacher_record, teacher_val_fscore
from distill.train import train_student
from facekd import distributed
from facekd.audit import audit_split, save_panel, write_fixed
from facekd.budget import Budget, BudgetError
from facekd.challenge import PARAM_LIMIT
from facekd.config import resolve_config
from facekd.inference import list_images
from facekd.latency import RUNS, WARMUP
from facekd.app.export import export
from facekd.files import InputError, load_checkpoint
from facekd.models import load_model
from teachers.ensemble import model_or_ensemble
from facekd.app.report import write_report
from facekd.profile import model_cost
from facekd.run_folder import removed_if_budget_refused, run_folder_lock
from facekd.app.submission import package as package_submission
from teachers.train import train_teacher

# What the prune stage aims for, per preset: a fraction of the distilled student's params.
PRUNE_KEEP = {"smoke": 0.7, "cpu": 0.8, "gpu": 0.8}
# --prune-from wide distils this over-limit student instead of the preset's, then prunes it to
# under the challenge's limit ("train big, then compress", Li et al., ICML 2020).
WIDE_STUDENT = "resfpn_wide"
PRUNE_FROM = ("student", "wide")
FINETUNE_KD = ("auto", "always", "never")
TRAIN_TEACHER = "train"  # --teacher train: the pipeline's teacher stage trains one (the default)
# The stage a pipeline skips, rather than failing, when its share of the budget cannot hold it.
LAST_TRAINING_STAGE = "prune"
# How a pipeline --budget is shared among the training stages, per preset. Each stage gets
# its share of what is left when it starts, so time one stage leaves unused goes to the next.
BUDGET_SHARES = {"smoke": {"teacher": 0.4, "distill": 0.4, "prune": 0.2},
                 "cpu": {"teacher": 0.45, "distill": 0.4, "prune": 0.15},
                 "gpu": {"teacher": 0.45, "distill": 0.4, "prune": 0.15}}


def _cost(checkpoint: Path) -> dict:
    ckpt = load_checkpoint(checkpoint)
    model = load_model(ckpt, checkpoint)
    return {"val_fscore": ckpt.get("val_fscore"), **model_cost(model)}


def _teacher_cost(checkpoints: list[Path], cfg, data_root) -> dict:
    """_cost of the teacher, which may be an ensemble: its val F-score is then scored here.
    Loaded unfrozen, as _cost loads a model, so that its parameters are counted."""
    teacher, info = model_or_ensemble(checkpoints)
    return {"val_fscore": teacher_val_fscore(teacher, info, cfg, data_root), **model_cost(teacher)}


def finetune_under_teacher(policy: str, teacher_fscore: float | None, student_fscore: float | None) -> bool:
    """Whether the prune stage distils from the teacher. "auto" asks for a teacher that scored
    strictly above the student; a missing score counts as no evidence, so the teacher is kept."""
    if policy not in FINETUNE_KD:
        raise ValueError(f"--finetune-kd must be one of {FINETUNE_KD}, got {policy!r}")
    if policy != "auto":
        return policy == "always"
    return teacher_fscore is None or student_fscore is None or teacher_fscore > student_fscore


# What the tail costs beyond the latencies priced below: run.py's start-up (import torch), the
# zip, and the report's imports, plots and page. The whole tail of a 1-minute smoke pipeline
# took 5.5 s on the quiet development machine, about 1 s of it priced by the latencies; with
# the other core busy it takes up to twice as long, which the budget test's slack absorbs.
TAIL_FIXED_SECONDS = 5.0
# The report's 2048^3 matmul rate: three matmuls at one thread, 0.4-0.6 s on that machine.
MATMUL_SECONDS = 1.5


def _tail_seconds(images, data_root, stages: dict, report_scores_teacher: bool) -> float:
    """What follows the last training stage will cost: run.py predicting the test images
    with the student (two passes each with flip TTA, plus decoding and writing), and the
    report scoring every model in the run folder on val, then timing them side by side
    (facekd.latency: a warm-up and RUNS forward passes each, and a matmul rate): student,
    pruned student, and the teacher when this pipeline trained it. Each model is priced from
    its own measured latency once it exists (the pruned one as the student), so the estimate
    follows the machine and a slow teacher does not push the pipeline past its budget."""
    def latency_s(stage: str) -> float:
        return stages.get(stage, {}).get("latency_ms", 30.0) / 1000

    def seconds_per_image(stage: str) -> float:
        return 2 * latency_s(stage) + 0.03

    n_val = len(list((Path(data_root) / "val" / "masks").glob("*.png")))
    scored = ["distill", "distill"] + (["teacher"] if report_scores_teacher else [])
    timing = MATMUL_SECONDS + sum((WARMUP + RUNS) * latency_s(stage) for stage in scored)
    return (TAIL_FIXED_SECONDS + timing + len(list_images(images)) * seconds_per_image("distill")
            + n_val * sum(seconds_per_image(stage) for stage in scored))


@dataclasses.dataclass
class Pipeline:
    """One pipeline run folder: its stage configs, its budget and summary.json. Each stage is
    a method returning what summary.json records about it."""
    data_root: Path
    out: Path
    preset: str
    images: Path
    configs: dict
    budget: Budget | None
    summary: dict
    prune_from: str
    resume: bool
    show_progress: bool
    finetune_kd: str
    given_teacher: list[Path] | None = None  # --teacher: checkpoints trained earlier, [] for none

    @property
    def trains_teacher(self) -> bool:
        return self.given_teacher is None

    @property
    def teacher_checkpoints(self) -> list[Path]:
        """What the student stages distil from: one checkpoint, an ensemble's, or none (labels alone)."""
        return [self.out / "teacher" / "best.pt"] if self.trains_teacher else self.given_teacher

    @property
    def stages(self) -> dict:
        return self.summary["stages"]

    def save(self) -> None:
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")

    def stage_config(self, name: str, stage: str) -> tuple:
        """The stage's config, with its share of what is left of the pipeline's budget."""
        cfg = self.configs[stage]
        if self.budget is None:
            return cfg, None
        planned = self.summary.setdefault("planned_s", {})
        if name not in planned:  # a resumed stage keeps the budget it started with
            shares = BUDGET_SHARES[self.preset]
            later = [n for n in shares if n not in self.stages]
            tail = _tail_seconds(self.images, self.data_root, self.stages,
                                 report_scores_teacher=self.trains_teacher)
            left = self.budget.left() - tail
            planned[name] = left * shares[name] / sum(shares[n] for n in later)
            self.save()
        if planned[name] <= 0:
            raise BudgetError(f"the pipeline's budget of {self.budget.seconds / 60:g} min is spent before its "
                              f"{name} stage")
        return dataclasses.replace(cfg, budget_minutes=planned[name] / 60), planned[name]

    def run_stage(self, name: str, checkpoint: str | None = "best.pt") -> None:
        """Run the stage's method unless the stage already finished; record its cost and wall time."""
        if name in self.stages:
            tqdm.write(f"[pipeline] {name}: done earlier, skipped")
            return
        tqdm.write(f"[pipeline] {name}: starting" + (f" ({self.budget.describe()})" if self.budget else ""))
        t0 = time.time()
        try:
            info = getattr(self, name)() or {}
        except BudgetError as e:
            if name != LAST_TRAINING_STAGE:
                raise
            # the student it would have cut is trained already: ship that rather than nothing
            tqdm.write(f"[pipeline] {name}: skipped, {e}; the best model so far is exported")
            info, checkpoint = {"skipped": str(e)}, None
        if checkpoint and name != "teacher":
            info.update(_cost(self.out / name / checkpoint))
        elif checkpoint and self.teacher_checkpoints:  # labels alone: no teacher to cost
            info.update(_teacher_cost(self.teacher_checkpoints, self.configs["distill"], self.data_root))
        self.stages[name] = {"wall_s": time.time() - t0, **info}
        self.save()

    def trained_anything(self) -> bool:
        """Whether a training stage of this pipeline has finished: its model is worth keeping."""
        return any("epochs" in self.stages.get(name, {}) for name in ("teacher", "distill"))

    def run_all(self, audit: bool) -> None:
        if audit:
            self.run_stage("audit", checkpoint=None)
            self.data_root = self.out / "audit" / "data"  # every later stage trains on the fixed copy
        for name in ("teacher", "distill", "prune"):
            self.run_stage(name)
        for name in ("solution", "package", "report"):
            self.run_stage(name, checkpoint=None)
        self.summary["total_wall_s"] = sum(s["wall_s"] for s in self.stages.values())
        self.save()

    def audit(self) -> dict:
        report = audit_split(self.data_root, "train", show_progress=self.show_progress)
        fixed = self.out / "audit" / "data"
        if fixed.exists():  # a killed earlier attempt; the copy is cheap to redo
            shutil.rmtree(fixed)
        write_fixed(report, fixed)
        panel = save_panel(report, self.out / "audit" / "flagged.png")
        return {"data": str(fixed), "mirrored": report["mirrored"], "inconsistent": report["inconsistent"],
                "panel": str(panel) if panel else None}

    def teacher(self) -> dict:
        if not self.trains_teacher:
            return {"from": teacher_record(self.given_teacher)}
        cfg, planned = self.stage_config("teacher", "teacher")
        return _trained(train_teacher(cfg, self.data_root, self.out / "teacher", resume=self.resume,
                                      show_progress=self.show_progress), planned)

    def distill(self) -> dict:
        cfg, planned = self.stage_config("distill", "distill")
        return _trained(train_student(cfg, self.data_root, self.out / "distill", self.teacher_checkpoints,
                                      resume=self.resume, show_progress=self.show_progress), planned)

    def prune(self) -> dict:
        cfg, planned = self.stage_config("prune", "prune")
        target = (PARAM_LIMIT - 1 if self.prune_from == "wide"
                  else int(self.stages["distill"]["params"] * PRUNE_KEEP[self.preset]))
        with_teacher = bool(self.teacher_checkpoints) and finetune_under_teacher(
            self.finetune_kd, self.stages["teacher"].get("val_fscore"), self.stages["distill"].get("val_fscore"))
        # round_to 8, not auto: pruning three times and timing the results costs a short budgeted
        # stage much of its fine-tuning (12 s of the smoke pipeline's 12); prune the result for speed
        # afterwards with `facekd prune --round-to auto` if latency matters
        result = prune_and_finetune(cfg, self.data_root, self.out / "prune", self.out / "distill" / "best.pt",
                                    self.teacher_checkpoints if with_teacher else None, PruneTarget("params", target),
                                    PruneSettings(round_to=8), resume=self.resume, show_progress=self.show_progress)
        return {"target_params": target, "finetune_kd": with_teacher, "pruning": result["report"]["pruning"],
                **_trained(result, planned)}

    def solution(self) -> dict:
        # ship the better of the two students by validation F-score, among those under the limit
        legal = [n for n in ("distill", "prune") if self.stages[n].get("params", PARAM_LIMIT) < PARAM_LIMIT]
        best = max(legal, key=lambda n: self.stages[n]["val_fscore"] or 0)
        # force: the folder is this pipeline's own, and holds a model only if a killed run exported it
        return {"from": best, **export(self.out / best / "best.pt", self.out / "solution", force=True)}

    def package(self) -> dict:
        report = package_submission(self.images, self.out / "solution", self.out / "submission.zip")
        if not report.ok:
            raise ValueError("submission check failed:\n" + "\n".join(report.faults))
        return {"images": str(self.images), "masks": report.masks, "zip": str(self.out / "submission.zip")}

    def report(self) -> dict:
        # the page to open when it is done: every model, its curves, its worst images
        return {"page": str(write_report([self.out], self.out / "report", self.data_root, show_progress=self.show_progress))}


def _trained(result: dict, planned_s: float | None) -> dict:
    return {"planned_s": planned_s, "epochs": result["epochs"], "images_seen": result["images_seen"]}


def run_pipeline(data_root, out, preset: str = "smoke", images=None, config_file: str | None = None,
                 resume: bool = False, show_progress: bool = True, audit: bool = True,
                 budget_minutes: float | None = None, assignments: list[str] | None = None,
                 prune_from: str = "student", teacher: str | Path | list | None = None,
                 finetune_kd: str = "auto", seed: int | None = None) -> dict:
    teachers = _check_arguments(prune_from, finetune_kd, teacher)  # None: the teacher stage trains one
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise FileExistsError(f"{out} already holds a pipeline; pass --resume to continue it or choose another --out")
    images = _images_to_package(images, data_root)
    configs = {name: resolve_config(name, preset, config_file, assignments, seed=seed)
               for name in ("teacher", "distill", "prune")}
    if prune_from == "wide":
        configs["distill"] = dataclasses.replace(configs["distill"], model=WIDE_STUDENT)
    budget = Budget(budget_minutes) if budget_minutes is not None else None
    if budget is not None and not resume:
        _refuse_budget_below_tail(budget, images, data_root, report_scores_teacher=teachers is None)
    with run_folder_lock(out):
        before = set(out.iterdir())
        summary = _open_summary(out, preset, prune_from, teachers, audit, finetune_kd)
        if budget is not None:
            summary["budget_s"] = budget.seconds
            # a resumed pipeline has already spent what its finished stages took
            budget.resume(sum(s["wall_s"] for s in summary["stages"].values()), None)
        pipeline = Pipeline(Path(data_root), out, preset, Path(images), configs, budget, summary, prune_from,
                            resume, show_progress, finetune_kd, None if teachers is None else [Path(p) for p in teachers])
        # A budget refused before any model was trained leaves nothing behind, so a plain rerun
        # with a larger one is accepted; a trained teacher or student is kept for --resume.
        with removed_if_budget_refused(out, keep=lambda: pipeline.trained_anything(), only_new_since=before):
            pipeline.run_all(audit)
    return summary


def _check_arguments(prune_from: str, finetune_kd: str, teacher) -> list[str] | None:
    """Everything that can be refused before the pipeline writes anything; returns the
    --teacher checkpoints (None to train one, [] for labels alone), each loaded once to refuse
    an unsafe, foreign or mis-sized one before the audit rather than after."""
    if distributed.is_distributed():
        # audit, export and packaging would run once per rank; the stages themselves are torchrun-ready
        raise ValueError("facekd pipeline runs as one process; under torchrun, run its stages "
                         "(train-teacher, distill, prune) one by one")
    if prune_from not in PRUNE_FROM:
        raise ValueError(f"--prune-from must be one of {PRUNE_FROM}, got {prune_from!r}")
    finetune_under_teacher(finetune_kd, None, None)  # refuses an unknown policy before any training
    teachers = given_teacher(teacher)
    if teachers == [] and finetune_kd == "always":
        raise ValueError("--finetune-kd always needs a teacher; --teacher none trains from labels alone")
    frozen_teacher(teachers)
    return teachers


def given_teacher(value) -> list[str] | None:
    """--teacher as the pipeline reads it: None when its teacher stage is to train one ('train',
    or the flag left out), else the checkpoints teacher_paths names ([] for 'none')."""
    items = [] if value is None else [value] if isinstance(value, (str, Path)) else list(value)
    if [str(v) for v in items] in ([], [TRAIN_TEACHER]):
        return None
    if TRAIN_TEACHER in map(str, items):
        raise ValueError(f"--teacher: '{TRAIN_TEACHER}' (the pipeline trains one) cannot be combined with {items}")
    return teacher_paths(items)


def _images_to_package(images, data_root) -> Path:
    """--images, or the data's test (else val) images. Packaging them is the pipeline's last
    stage, so a folder with no images is refused here rather than after every training stage,
    naming the flag the user gave (issue 34: a wrong --data was called a wrong --images)."""
    if images is not None:
        images = Path(images)
        if not images.is_dir() or not list_images(images):
            raise InputError(f"--images {images}: not a folder of images")
        return images
    root = Path(data_root)
    if not root.is_dir():
        raise InputError(f"--data {root}: no such folder")
    test_images = root / "test" / "images"
    images = test_images if test_images.is_dir() else root / "val" / "images"
    if not images.is_dir() or not list_images(images):
        raise InputError(f"--data {root}: no images to package in test/images or val/images; give --images")
    return images


def _refuse_budget_below_tail(budget: Budget, images, data_root, report_scores_teacher: bool) -> None:
    """What is known before any work: export, packaging and the report alone must fit."""
    tail = _tail_seconds(images, data_root, {}, report_scores_teacher)
    if tail >= budget.seconds:
        raise BudgetError(f"--budget {budget.seconds / 60:g} min is too small for a pipeline: export, packaging "
                          f"and the report alone take about {tail:.0f} s here, before any training; give at "
                          f"least {3 * tail / 60:.1f} min")


def _open_summary(out: Path, preset: str, prune_from: str, teachers: list[str] | None, audit: bool,
                  finetune_kd: str) -> dict:
    """summary.json's content, new or resumed; a resume with other settings is refused."""
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"preset": preset, "stages": {}}
    if summary.setdefault("prune_from", prune_from) != prune_from:
        raise ValueError(f"{out} was started with --prune-from {summary['prune_from']}; resume it with that")
    teacher = None if teachers is None else teacher_record(teachers)
    if summary.setdefault("teacher_from", teacher) != teacher:
        started = f"--teacher {summary['teacher_from']}" if summary["teacher_from"] else "its own teacher stage"
        raise ValueError(f"{out} was started with {started}; resume it with that")
    # an older summary has no "audit" key: its stages say whether it audited
    if summary.setdefault("audit", "audit" in summary["stages"] or not summary["stages"] and audit) != audit:
        raise ValueError(f"{out} was started {'with' if summary['audit'] else 'without'} the label audit; "
                         f"resume it {'without' if summary['audit'] else 'with'} --no-audit")
    if summary.setdefault("finetune_kd", finetune_kd) != finetune_kd:
        raise ValueError(f"{out} was started with --finetune-kd {summary['finetune_kd']}; resume it with that")
    return summary


def closing_lines(summary: dict, out, on_sample: bool) -> list[str]:
    """What `facekd pipeline` prints when it is done: what it made and where, the shipped
    score, and the next command; summary.json (or --json) holds the rest."""
    stages, out = summary["stages"], Path(out)
    shipped = stages["solution"]["from"]
    lines = [f"made in {out}/:",
             f"  solution/          the {shipped} stage's model, {stages[shipped]['params']:,} params "
             f"(python {out / 'solution' / 'run.py'} --input IMAGES --output MASKS)",
             f"  submission.zip     masks for {stages['package']['masks']} images + solution/, checked",
             "  report/index.html  every model compared, open it in a browser",
             "  summary.json       each stage's time, epochs and scores"]
    lines += [f"skipped the {name} stage: {info['skipped']}" for name, info in stages.items() if "skipped" in info]
    score = stages[shipped].get("val_fscore")
    lines.append("shipped val F-score: " + ("n/a" if score is None else f"{score:.4f}"))
    if on_sample:
        lines += ["  (the embedded 16+4-image sample, for a smoke run: this score means nothing; "
                  "the real data scores above 0.8)",
                  "next: link the real data (README, 'The real data') and run "
                  "facekd pipeline --data data/celebamask-mini --preset cpu --budget 150 --out runs/cpu150"]
    else:
        lines.append(f"next: facekd check-submission {out / 'submission.zip'}, then submit it")
    return lines
