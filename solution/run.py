"""Face-parsing solution: one mask PNG (mode "P", class ids 0..18) per input image.

    python3 run.py --input /path/img.jpg --output /path/mask.png [--weights ckpt.pth] [--no-tta]

Standalone on purpose: it needs only torch, numpy, pillow and the modules shipped next to
it (students/, facekd/models.py and the few core modules they import), so it runs where
facekd is not installed and from any working directory. Generated folders come from `facekd export`;
this file's canonical copy lives in the facekd repository at solution/run.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The shipped modules must win over any installed facekd, so that what runs here is
# exactly what was exported next to the weights.
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from facekd.files import InputError, check_mask_jobs, load_checkpoint, one_line  # noqa: E402
from facekd.inference import list_images, load_rgb, predict_mask, save_mask  # noqa: E402
from facekd.models import load_model  # noqa: E402
from facekd.registry import skip_plugins  # noqa: E402
import students  # noqa: E402,F401  (registers the student architectures load_model builds)

# Only the shipped students: an installed facekd's plugins would import its modules from
# beside these, where the solution does not ship them.
skip_plugins()


def model_from_export(weights: str | Path, device: torch.device | None = None) -> tuple[torch.nn.Module, int]:
    """The student and the square size it expects, from an exported ckpt.pth, through the
    project's one dict-to-model loader. A file that is not a usable export is an InputError
    naming it."""
    ckpt = load_checkpoint(weights)
    try:
        model, input_size = load_model(ckpt, weights), int(ckpt["model_cfg"]["input_size"])
    except Exception as e:  # a missing key, an unknown arch, a state-dict mismatch...
        raise InputError(f"{weights}: not a usable facekd export ({one_line(e)})") from e
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval().to(memory_format=torch.channels_last)
    return model, input_size


def predict_file(model: torch.nn.Module, input_size: int, src: Path, dst: Path, flip_tta: bool = True) -> None:
    """Mask for one image, at the image's own size. The PNG is written atomically, so a
    bad input or a crash leaves no file behind."""
    save_mask(predict_mask(model, load_rgb(src), input_size, flip_tta=flip_tta), dst)


def mask_jobs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """A file maps to the given output path; a folder maps each image to <dst>/<stem>.png."""
    if src.is_dir():
        return [(p, dst / f"{p.stem}.png") for p in list_images(src)]
    return [(p, dst) for p in list_images(src)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="an image, or a folder of images")
    parser.add_argument("--output", required=True, help="mask PNG path, or a folder when --input is a folder")
    parser.add_argument("--weights", default=str(HERE / "ckpt.pth"), help="default: ckpt.pth next to run.py")
    parser.add_argument("--no-tta", action="store_true", help="disable horizontal-flip test-time augmentation")
    parser.add_argument("--list-written", action="store_true",
                        help="print each mask path as it is written (lets a caller show progress)")
    args = parser.parse_args(argv)

    src, dst = Path(args.input), Path(args.output)
    try:
        jobs = mask_jobs(src, dst)
        if not jobs:
            raise InputError(f"{src}: no images")
        # every output is checked before the weights are even read, so a mistake costs nothing
        check_mask_jobs(jobs, protected=(Path(args.weights),))
        model, input_size = model_from_export(args.weights)
    except (InputError, FileNotFoundError) as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 1
    failed = 0
    for image, mask in jobs:
        try:
            predict_file(model, input_size, image, mask, flip_tta=not args.no_tta)
        except (InputError, OSError) as e:  # a folder run carries on, so one bad image costs one mask
            print(f"run.py: error: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.list_written:
            print(mask, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
