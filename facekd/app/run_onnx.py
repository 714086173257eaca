"""Face parsing through model.onnx: one mask PNG (mode "P", class ids 0..18) per image.

    python3 run_onnx.py --input img.jpg --output mask.png [--model model.onnx]

Needs numpy, pillow and onnxruntime alone, not torch, so it starts in a fraction of
run.py's time. `facekd export --format onnx` writes it next to model.onnx and onnx.json;
the graph does the normalising, the flip TTA, the upsampling and the argmax. An image not at
the model's input size is resized to it, and its mask back to the image's size (nearest),
which run.py, upsampling logits rather than ids, does slightly differently.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def mask_jobs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """A file maps to the given output path; a folder maps each image to <dst>/<stem>.png."""
    if src.is_dir():
        return [(p, dst / f"{p.stem}.png") for p in sorted(src.iterdir()) if p.suffix.lower() in SUFFIXES]
    return [(src, dst)]


def predict_file(session, size: int, palette: list[int], src: Path, dst: Path) -> None:
    with Image.open(src) as im:
        rgb = im.convert("RGB")
    shape = rgb.size
    if shape != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    image = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)[None]
    mask = Image.fromarray(session.run(None, {"image": np.ascontiguousarray(image)})[0][0], "L")
    if shape != (size, size):
        mask = mask.resize(shape, Image.NEAREST)
    mask = mask.convert("P")
    mask.putpalette(palette)
    dst.parent.mkdir(parents=True, exist_ok=True)
    mask.save(dst, format="PNG")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="an image, or a folder of images")
    parser.add_argument("--output", required=True, help="mask PNG path, or a folder when --input is a folder")
    parser.add_argument("--model", default=str(HERE / "model.onnx"), help="default: model.onnx next to this file")
    args = parser.parse_args(argv)
    model = Path(args.model)
    meta_path = model.with_name("onnx.json")
    if not model.is_file() or not meta_path.is_file():
        print(f"run_onnx.py: error: {model} or {meta_path} not found", file=sys.stderr)
        return 1
    meta = json.loads(meta_path.read_text())
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    failed = 0
    for src, dst in mask_jobs(Path(args.input), Path(args.output)):
        try:
            predict_file(session, meta["input_size"], meta["palette"], src, dst)
        except OSError as e:  # an unreadable image costs its own mask, not the rest
            print(f"run_onnx.py: error: {src}: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
