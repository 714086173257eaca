"""Fill a soft-target cache once, so that runs sharing it (`--set soft_target_cache=DIR`)
all train for their whole budget instead of each paying the teacher's pass inside it.

    python benchmarks/precompute_soft_targets.py TEACHER [TEACHER ...] DATA CACHE [--preset cpu] [--threads 2]
        [--stage distill|prune] [--set KEY=VALUE ...]

Stores exactly what `facekd distill --preset P --set distill_mode=offline
--set soft_target_cache=CACHE` would, under the same key, so those runs hit the cache.
`--stage prune` does the same for `facekd prune` and `facekd finetune` (which share that
stage's config), and `--set` takes the runs' own overrides: the stored side follows their
largest training resolution, so `--set 'resolutions=[[512,3]]'` must be given here too.
"""

import argparse
import dataclasses

from distill.soft_targets import offline_soft_targets, stored_size
from distill.teacher import frozen_teacher, teacher_paths
from facekd.models import init_model
from facekd.config import resolve_config


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", nargs="+", help="the teacher checkpoint (best.pt); several make an ensemble")
    parser.add_argument("data", help="dataset root the runs will train on")
    parser.add_argument("cache", help="the soft_target_cache folder the runs will name")
    parser.add_argument("--preset", default="cpu", help="the preset the runs use (sets the stored size)")
    parser.add_argument("--stage", default="distill", choices=["distill", "prune"],
                        help="the stage whose preset the runs use (prune also serves finetune)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="the runs' own config overrides, as they pass them")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cfg = dataclasses.replace(resolve_config(args.stage, args.preset, assignments=args.set), distill_mode="offline",
                              soft_target_cache=args.cache, threads=args.threads)
    teacher, _ = frozen_teacher(args.teacher)
    student, _ = init_model(cfg)  # only its output stride is read
    _, record = offline_soft_targets(cfg, teacher, teacher_paths(args.teacher), args.data, stored_size(cfg, student))
    print(record)


if __name__ == "__main__":
    main()
