"""One-shot: val F of the shipped student right after pruning to one target (no fine-tuning),
magnitude vs Taylor importance, on the real val split."""
import json, sys, time
import torch
from compress.prune import prune_to_target
from compress.train import taylor_gradients
from facekd.files import load_checkpoint
from facekd.models import load_model
from facekd.challenge import count_params
from facekd.data import load_split
from facekd.evaluation import evaluate

torch.set_num_threads(1)
data, target = "data/celebamask-mini", int(sys.argv[1])
val = load_split(data, "val", None, show_progress=False)
out = {"target_params": target, "val_images": len(val)}
for importance in ("magnitude", "taylor"):
    torch.manual_seed(0)
    ckpt = load_checkpoint("solution/ckpt.pth")
    model = load_model(ckpt, "solution/ckpt.pth")
    size = ckpt["model_cfg"]["input_size"]
    if importance == "magnitude":
        out["before"] = {"params": count_params(model), "val_fscore": evaluate(model, val, size, True)["fscore"]}
    t0 = time.time()
    grad = taylor_gradients(data) if importance == "taylor" else None
    rep = prune_to_target(model, target_params=target, importance=importance, gradient_fn=grad)
    out[importance] = {"params": rep["params_after"], "steps": rep["steps"], "prune_s": round(time.time() - t0, 1),
                       "val_fscore": evaluate(model.eval(), val, size, True)["fscore"]}
    print(json.dumps(out), flush=True)
