"""Run each bad-input case of docs/ROBUSTNESS.md as a new user would, in a scratch folder,
and print one markdown table row per case (exit status and the last lines of output).

    python docs/robustness_cases.py                 # every case, a few minutes
    python docs/robustness_cases.py bomb evaluate   # only the cases whose name holds a word
"""
import os, shutil, struct, subprocess, sys, tempfile, zlib, zipfile
from pathlib import Path
import numpy as np, torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
T = Path(tempfile.gettempdir()) / "facekd_robustness"
shutil.rmtree(T, ignore_errors=True)
T.mkdir(parents=True)
os.chdir(T)
VAL = REPO / "facekd/sample_data/val"
imgs = sorted((VAL / "images").glob("*.jpg"))
sh = lambda c: subprocess.run(c, shell=True, capture_output=True, text=True)

# fixtures
(T / "pngs").mkdir()
for p in imgs[:2]:
    Image.open(p).save(T / "pngs" / f"{p.stem}.png")
(T / "dup").mkdir(); shutil.copy(imgs[0], T / "dup/x.jpg"); Image.open(imgs[0]).save(T / "dup/x.png")
g = np.linspace(0, 65535, 512 * 512).reshape(512, 512).astype(np.uint16); Image.fromarray(g).save(T / "g16.png")
Image.fromarray(np.array(Image.open(imgs[0]).convert("L")).astype(np.uint16) * 257).save(T / "g16face.png")
Image.new("F", (64, 64)).save(T / "float.tiff")
Image.open(imgs[0]).convert("CMYK").save(T / "cmyk.jpg")
def claiming(path, w, h):
    Image.new("L", (8, 8)).save(path); d = bytearray(path.read_bytes())
    d[16:24] = struct.pack(">II", w, h); d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29]))); path.write_bytes(bytes(d))
(T / "withbomb").mkdir(); claiming(T / "withbomb/a_bomb.png", 15000, 15000); shutil.copy(imgs[0], T / "withbomb")
claiming(T / "big.png", 5000, 4000)
(T / "tifs").mkdir(); Image.open(imgs[0]).save(T / "tifs/x.tif")
(T / "a_file").write_text("x"); (T / "a_folder").mkdir()
data = imgs[0].read_bytes(); (T / "truncated.jpg").write_bytes(data[: len(data) // 2])
(T / "notes.txt").write_text("hi")
ck = torch.load(REPO / "solution/ckpt.pth", weights_only=True)
ck2 = dict(ck, model_cfg={**ck["model_cfg"], "head_dim": 32}); torch.save(ck2, T / "mismatch.pt")
torch.save({"model": Path("x"), "model_cfg": {}}, T / "unsafe.pt")
(T / "gt").mkdir(); (T / "pred").mkdir()
for p in sorted((VAL / "masks").glob("*.png"))[:3]:
    shutil.copy(p, T / "gt"); m = np.array(Image.open(p)); m[:50, :50] = 200
    im = Image.frombytes("P", (512, 512), m.tobytes()); im.putpalette(Image.open(p).getpalette()); im.save(T / "pred" / p.name)
first = sorted((T / "gt").glob("*.png"))[0].name
for name, make in [("pred_allbad", lambda d: (lambda im: (im.putpalette(Image.open(T / "gt" / first).getpalette()), im.save(d / first)))(Image.frombytes("P", (512, 512), bytes([200]) * 512 * 512))),
                   ("pred_rgb", lambda d: Image.open(T / "gt" / first).convert("RGB").save(d / first)),
                   ("pred_broken", lambda d: (d / first).write_bytes(b"\x89PNG\r\n\x1a\nbroken"))]:
    shutil.copytree(T / "pred", T / name); make(T / name)
shutil.copytree(VAL / "images", T / "test")
shutil.copytree(REPO / "solution", T / "sol", ignore=shutil.ignore_patterns("__pycache__"))
with zipfile.ZipFile(T / "backslash.zip", "w") as zf:
    zf.writestr("masks\\x.png", b"")

# issue 28's fixtures: a tiny student, a checkpoint whose unpickling would run code, a folder
# holding a user's own run files, zips with a name stored twice or the code-running ckpt.pth,
# and 40 images that a zip has no masks for
sys.path.insert(0, str(REPO))
from facekd.models import build_model, named_config
from facekd.checkpoint import save_checkpoint
tiny_cfg = named_config("tiny", 64)
save_checkpoint({"model": build_model(tiny_cfg).state_dict(), "model_cfg": tiny_cfg, "stage": "distill"},
                T / "tiny_student.pt")
class RunsCode:
    def __reduce__(self):
        return (Path.write_text, (T / "ran", "ran"))
torch.save({"model": RunsCode(), "model_cfg": {}}, T / "evil.pt")
(T / "mine").mkdir(); (T / "mine/config.json").write_text('{"my": "own notes"}\n')
with zipfile.ZipFile(T / "twice.zip", "w") as zf:
    for fill in (0, 3):
        zf.writestr(f"masks/{imgs[0].stem}.png", bytes([fill]))
with zipfile.ZipFile(T / "evilsub.zip", "w") as zf:
    zf.write(T / "evil.pt", "solution/ckpt.pth")
(T / "many").mkdir()
for i in range(40):
    Image.new("RGB", (8, 8)).save(T / "many" / f"image_{i:03d}.jpg")
# more of issue 28's: teachers of 19 and 5 classes, a student whose weights are all NaN, a text
# file named like a checkpoint, a copy of the sample, a folder holding a user's own pruned.pt,
# and a zip whose member is a symbolic link
t_cfg = named_config("teacher_tiny", 64)
save_checkpoint({"model": build_model(t_cfg).state_dict(), "model_cfg": t_cfg}, T / "t19.pt")
save_checkpoint({"model": build_model({**t_cfg, "num_classes": 5}).state_dict(),
                 "model_cfg": {**t_cfg, "num_classes": 5}}, T / "t5.pt")
nan_student = build_model(tiny_cfg)
torch.nn.init.constant_(next(nan_student.parameters()), float("nan"))
save_checkpoint({"model": nan_student.state_dict(), "model_cfg": tiny_cfg, "stage": "distill"}, T / "nan.pt")
(T / "notes.pt").write_text("not a checkpoint at all\n")
shutil.copytree(REPO / "facekd/sample_data", T / "data2")
(T / "mine2").mkdir(); (T / "mine2/pruned.pt").write_text("my own pruned model\n")
with zipfile.ZipFile(T / "links.zip", "w") as zf:
    link = zipfile.ZipInfo("solution/escape")
    link.external_attr = 0o120777 << 16  # S_IFLNK: unzip would create a symbolic link
    zf.writestr(link, "../../../../etc/passwd")
# issue 34's fixtures (items 1-8): ground truth holding id 25 in a corner, or all 255; a second
# teacher_tiny and a second tiny student, of other weights; a folder holding a user's own
# config.json and metrics.jsonl
for name, fill in (("gt25", lambda m: m.__setitem__((slice(0, 50), slice(0, 50)), 25)),
                   ("gt255", lambda m: m.__setitem__(slice(None), 255))):
    shutil.copytree(T / "gt", T / name)
    p = sorted((T / name).glob("*.png"))[1]
    m = np.array(Image.open(p)); fill(m)
    im = Image.frombytes("P", (512, 512), m.tobytes()); im.putpalette(Image.open(p).getpalette()); im.save(p)
torch.manual_seed(1)
save_checkpoint({"model": build_model(t_cfg).state_dict(), "model_cfg": t_cfg}, T / "t19b.pt")
save_checkpoint({"model": build_model(tiny_cfg).state_dict(), "model_cfg": tiny_cfg, "stage": "distill"},
                T / "other_student.pt")
(T / "mine3").mkdir(); (T / "mine3/config.json").write_text('{"my": "own notes"}\n')
(T / "mine3/metrics.jsonl").write_text('{"my": "own log"}\n')
HOLD = ("python -c \"import sys, time; from facekd.run_folder import run_folder_lock; "
        "held = run_folder_lock(sys.argv[1]); held.__enter__(); print('held', flush=True); time.sleep(30)\"")
SMALL = "--set 'resolutions=[[64, 1]]'"
# issue 34's: a teacher's run folder (best.pt inside), a folder holding a copy of the shipped
# solution (val 0.8455) to export over, and an empty folder to run prune and finetune in
(T / "t19run").mkdir(); shutil.copy(T / "t19.pt", T / "t19run/best.pt")
(T / "fresh").mkdir()
VAL_OF = "python -c \"import sys, torch; print('ckpt.pth val F', torch.load(sys.argv[1], weights_only=True)['val_fscore'])\""

F = "facekd"
R = f"python {REPO}/solution/run.py"
I = f"{imgs[0]}"
cases = [
    ("evaluate: clean predictions", f"{F} evaluate --pred gt --gt gt"),
    ("evaluate: ids 200 in a 50x50 corner of 3 predictions", f"{F} evaluate --pred pred --gt gt"),
    ("evaluate: a prediction that is all id 200", f"{F} evaluate --pred pred_allbad --gt gt"),
    ("evaluate: an RGB prediction", f"{F} evaluate --pred pred_rgb --gt gt"),
    ("evaluate: an unreadable prediction PNG", f"{F} evaluate --pred pred_broken --gt gt"),
    ("evaluate: a prediction missing", f"{F} evaluate --pred pngs --gt gt"),
    ("evaluate: --pred not a folder", f"{F} evaluate --pred nowhere --gt gt"),
    ("predict: --output = --input, a folder of PNGs", f"{F} predict --weights {REPO}/solution/ckpt.pth --input pngs --output pngs"),
    ("predict: x.jpg and x.png in one folder", f"{F} predict --weights {REPO}/solution/ckpt.pth --input dup --output dupmasks"),
    ("run.py: --output = --input", f"{R} --input pngs/{imgs[0].stem}.png --output pngs/{imgs[0].stem}.png"),
    ("run.py: folder in, same folder out", f"{R} --input pngs --output pngs"),
    ("run.py: --output ckpt.pth (the weights)", f"{R} --input {I} --output sol/ckpt.pth --weights sol/ckpt.pth"),
    ("package: over a good zip, with a broken image added", f"{F} package --images test --solution sol --out sub.zip && cp sub.zip good.zip && cp truncated.jpg test/ && {F} package --images test --solution sol --out sub.zip; rc=$?; cmp sub.zip good.zip && echo 'sub.zip unchanged'; rm test/truncated.jpg; exit $rc"),
    ("run.py: 16-bit greyscale PNG of a face", f"{R} --input g16face.png --output g16_mask.png && python -c \"import numpy as np; from PIL import Image; print('classes in mask:', np.unique(np.array(Image.open('g16_mask.png'))).tolist())\""),
    ("run.py: 32-bit float TIFF", f"{R} --input float.tiff --output f.png"),
    ("run.py: CMYK JPEG", f"{R} --input cmyk.jpg --output cmyk_mask.png"),
    ("run.py: a PNG claiming 15000x15000 (218 KB bomb)", f"{R} --input withbomb/a_bomb.png --output bomb.png"),
    ("run.py: folder holding the bomb and a good image", f"{R} --input withbomb --output bombmasks; rc=$?; ls bombmasks; exit $rc"),
    ("predict: a 5000x4000 image", f"{F} predict --weights {REPO}/solution/ckpt.pth --input big.png --output bigmasks"),
    ("run.py: truncated JPEG", f"{R} --input truncated.jpg --output t.png"),
    ("run.py: output is an existing folder", f"{R} --input {I} --output a_folder"),
    ("run.py: folder input, output an existing file", f"{R} --input pngs --output a_file"),
    ("run.py: output under a file", f"{R} --input {I} --output a_file/m.png"),
    ("run.py: output folder not writable (/proc)", f"{R} --input {I} --output /proc/m.png"),
    ("predict: output folder not writable (/proc/x)", f"{F} predict --weights {REPO}/solution/ckpt.pth --input {I} --output /proc/x"),
    ("package: --out an existing folder", f"{F} package --images test --solution sol --out a_folder"),
    ("audit: --fix an existing file", f"{F} audit --fix a_file"),
    ("audit: --fix a non-empty folder", f"{F} audit --fix pngs"),
    ("export: --out an existing file", f"{F} export --checkpoint {REPO}/solution/ckpt.pth --out a_file"),
    ("modes of written files (umask 022)", f"umask 022; {R} --input {I} --output perm/m.png && {F} package --images test --solution sol --out perm/s.zip >/dev/null && stat -c '%a %n' perm/m.png perm/s.zip && python -c \"import zipfile; print(sorted({{oct(i.external_attr >> 16 & 0o777) for i in zipfile.ZipFile('perm/s.zip').infolist()}}))\""),
    ("predict: weights that do not match their model_cfg", f"{F} predict --weights mismatch.pt --input {I} --output mm"),
    ("run.py: weights that do not match their model_cfg", f"{R} --input {I} --output mm.png --weights mismatch.pt"),
    ("predict: a pickled object instead of weights", f"{F} predict --weights unsafe.pt --input {I} --output un"),
    ("run.py: a pickled object instead of weights", f"{R} --input {I} --output un.png --weights unsafe.pt"),
    ("run.py: --weights missing", f"{R} --input {I} --output w.png --weights nope.pth"),
    ("predict: a folder with one .tif", f"{F} predict --weights {REPO}/solution/ckpt.pth --input tifs --output tifmasks"),
    ("run.py: a text file as input", f"{R} --input notes.txt --output n.png"),
    ("run.py: input missing", f"{R} --input nope.jpg --output n.png"),
    ("run.py: empty folder", f"mkdir -p empty && {R} --input empty --output e"),
    ("check-submission: member masks\\x.png", f"{F} check-submission backslash.zip"),
    ("check-submission: not a zip", f"{F} check-submission notes.txt"),
    ("export: --checkpoint missing", f"{F} export --checkpoint nope.pt --out out"),
    ("export: refresh an existing folder's code", f"{F} export --out sol"),
    ("issue 28.1: --budget inf", f"{F} distill --teacher none --budget inf --out r1; rc=$?; ls r1; exit $rc"),
    ("issue 28.1: --budget 1e300", f"{F} distill --teacher none --budget 1e300 --out r1"),
    ("issue 28.2: resume a finished budgeted run", f"{F} distill --teacher none --budget 0.2 --out r2 {SMALL} 2>/dev/null | grep budget_spent; /usr/bin/time -f '%e s' {F} distill --teacher none --budget 0.2 --out r2 {SMALL} --resume 2>&1 | grep -o -e 'resumed.*left)' -e '.budget_spent_s.*' -e '^[0-9.]* s$'"),
    ("issue 28.3: a run killed mid-way, resumed with --teacher none", f"timeout -s INT 20 {F} distill --teacher t19.pt --out r3 --set 'resolutions=[[64, 500]]' >/dev/null 2>&1; ls r3/last.pt && {F} distill --teacher none --out r3 --set 'resolutions=[[64, 500]]' --resume"),
    ("issue 28.4: the same run resumed with other --data", f"{F} distill --teacher t19.pt --data data2 --out r3 --set 'resolutions=[[64, 500]]' --resume"),
    ("issue 28.5: prune, --budget too small", f"{F} prune --checkpoint tiny_student.pt --ratio 0.3 --budget 0.01 --out p5 {SMALL}; rc=$?; ls p5; exit $rc"),
    ("issue 28.5: prune --sweep, --budget too small", f"{F} prune --checkpoint tiny_student.pt --ratio 0.3,0.5 --sweep --budget 0.01 --out s5 {SMALL}; rc=$?; ls s5; exit $rc"),
    ("issue 28.5: pipeline, --budget 0.05", f"{F} pipeline --budget 0.05 --out pipe5; rc=$?; ls pipe5; exit $rc"),
    ("issue 28.6: --set lr=inf", f"{F} distill --teacher none --out r6 --set lr=inf; rc=$?; ls r6; exit $rc"),
    ("issue 28.6: a loss that overflows mid-run (--set lr=1e30)", f"{F} distill --teacher none --out r6b --set 'resolutions=[[64, 3]]' --set lr=1e30 2>&1 | tail -1; rc=${{PIPESTATUS[0]}}; ls r6b; exit $rc"),
    ("issue 28.7: export a checkpoint whose weights are NaN", f"{F} export --checkpoint nan.pt --out s7; rc=$?; ls s7; exit $rc"),
    ("issue 28.8: --set warmup_epochs=nan", f"{F} distill --teacher none --out r8 --set warmup_epochs=nan"),
    ("issue 28.8: --set scale_max=inf", f"{F} distill --teacher none --out r8 --set scale_max=inf"),
    ("issue 28.9: distill, a 5-class teacher", f"{F} distill --teacher t5.pt --out r9; rc=$?; ls r9; exit $rc"),
    ("issue 28.9: pipeline, a 5-class teacher", f"{F} pipeline --teacher t5.pt --out p9; rc=$?; ls p9; exit $rc"),
    ("issue 28.10: a text file as a checkpoint", f"{F} export --checkpoint notes.pt --out s10"),
    ("issue 28.11: prune --teacher evil.pt", f"{F} prune --checkpoint tiny_student.pt --ratio 0.3 --teacher evil.pt --out p11; rc=$?; ls p11 ran; exit $rc"),
    ("issue 28.11: pipeline --teacher evil.pt", f"{F} pipeline --teacher evil.pt --out p11b; rc=$?; ls p11b ran; exit $rc"),
    ("issue 28.11: pipeline --images nowhere", f"{F} pipeline --images nowhere --out p11c; rc=$?; ls p11c; exit $rc"),
    ("issue 28.12: check-submission, a ckpt.pth that would run code", f"{F} check-submission evilsub.zip | grep -e ckpt.pth -e weights_only; ls ran"),
    ("issue 28.14: --out a folder holding my config.json", f"{F} distill --teacher none --out mine {SMALL}; rc=$?; cat mine/config.json; exit $rc"),
    ("issue 28.14: prune --out a folder holding my pruned.pt", f"{F} prune --checkpoint tiny_student.pt --ratio 0.3 --out mine2 {SMALL}; rc=$?; cat mine2/pruned.pt; exit $rc"),
    ("issue 28.15: --out a folder another run holds", f"{HOLD} busy & sleep 3; {F} distill --teacher none --out busy {SMALL}; rc=$?; kill %1; exit $rc"),
    ("issue 28.15: the holder killed -9 (a stale lock)", f"{HOLD} stale & sleep 3; kill -9 $!; wait $! 2>/dev/null; ls stale; {F} distill --teacher none --out stale {SMALL} >/dev/null 2>&1; rc=$?; ls stale | tr '\\n' ' '; exit $rc"),
    ("issue 28.16: a soft-target cache with bytes overwritten mid-file", f"{F} distill --teacher t19.pt --out c1 {SMALL} --set distill_mode=offline --set soft_target_cache=cache >/dev/null 2>&1; python -c \"import glob; p = glob.glob('cache/*.pt')[0]; d = bytearray(open(p, 'rb').read()); m = len(d) // 2; d[m:m + 64] = b'\\xff' * 64; open(p, 'wb').write(d)\"; {F} distill --teacher t19.pt --out c2 {SMALL} --set distill_mode=offline --set soft_target_cache=cache 2>/dev/null | grep checksum"),
    ("issue 28.17: check-submission, a member that is a symbolic link", f"{F} check-submission links.zip | grep 'symbolic'"),
    ("issue 28.18: check-submission, a mask stored twice", f"{F} check-submission twice.zip 2>/dev/null | grep 'stored'"),
    ("issue 28 friction 2: facekd pipeline (the sample)", f"{F} pipeline --out pipe 2>/dev/null | tail -9"),
    ("issue 28.13: the pipeline above resumed with --no-audit", f"{F} pipeline --no-audit --resume --out pipe"),
    ("issue 28 friction 3: distill --help, --teacher's default", f"{F} distill --help | grep -A2 -e '--teacher'"),
    ("issue 28 friction 3: distill --teacher gone.pt", f"{F} distill --teacher gone.pt --out r"),
    ("issue 28 friction 4: predict, old and new option names", f"{F} predict --weights {REPO}/solution/ckpt.pth --input {I} --output old && {F} predict --checkpoint {REPO}/solution/ckpt.pth --images {I} --out new"),
    ("issue 28 friction 6: facekd --help, a bad argument", f"/usr/bin/time -f '%e s' {F} --help >/dev/null; /usr/bin/time -f '%e s' {F} distill --bogus 2>&1 | tail -2"),
    ("issue 28 friction 8: a budgeted distill, cut mid-epoch", f"/usr/bin/time -f '%e s wall' {F} distill --teacher none --budget 0.25 --out f8 --set 'resolutions=[[64, 3], [96, 1]]' 2>&1 | grep -e '\"epochs' -e budget_ -e wall"),
    ("issue 28 friction 10: check-submission, 40 masks missing", f"{F} check-submission twice.zip --images many 2>/dev/null | grep 'no mask'"),
    ("issue 28 friction 11: the report's header", f"{F} report f8 --out rep >/dev/null 2>&1; grep -o '<p>[0-9]* models* from [0-9]* run folders*' rep/index.html"),
    ("issue 34.2: export over a solution folder", f"{F} export --checkpoint tiny_student.pt --out sol; rc=$?; {VAL_OF} sol/ckpt.pth; exit $rc"),
    ("issue 34.2: the same with --force, over a copy", f"cp -r sol solf && {F} export --checkpoint tiny_student.pt --out solf --force"),
    ("issue 34.3: distill --data (the sample copied), no --preset", f"{F} distill --teacher none --data data2 --out r34 {SMALL} 2>&1 | grep -e 'preset' -e '\"params\"'"),
    ("issue 34.5: pipeline --data wrong/path", f"{F} pipeline --data wrong/path --out p34; rc=$?; ls p34; exit $rc"),
    ("issue 34.5: distill --teacher a run folder", f"{F} distill --teacher t19run --out r34t {SMALL} >/dev/null 2>&1; rc=$?; grep '\"teacher\"' r34t/config.json; exit $rc"),
    ("issue 34.5: prune without --checkpoint", f"cd fresh && {F} prune --ratio 0.3"),
    ("issue 34.5: finetune without --checkpoint", f"cd fresh && {F} finetune"),
    ("issue 34.5: a budgeted run's log line, cut mid-epoch", f"{F} distill --teacher none --budget 0.25 --out f34 --set 'resolutions=[[64, 3], [96, 1]]' 2>/dev/null | grep '^.distill' | tail -1; grep '\"epochs\"' f34/result.json"),
    ("issue 34.5: prune's output", f"{F} prune --checkpoint tiny_student.pt --ratio 0.3 --out p34b {SMALL} 2>/dev/null > p34b.txt; rc=$?; echo \"$(wc -l < p34b.txt) lines on stdout (the validation's, then these):\"; tail -4 p34b.txt | paste -sd ';'; exit $rc"),
    ("issue 34.1: distill, --set batch_size=3 on 2 threads", f"{F} distill --teacher none --set batch_size=3 --set threads=2 {SMALL} --out b3 2>&1 | grep -e '\"steps' -e images_seen -e rror; exit ${{PIPESTATUS[0]}}"),
    ("issue 34.1: distill, --set train_limit=15 (a last batch of 3)", f"{F} distill --teacher none --set train_limit=15 --set threads=2 {SMALL} --out b15 2>&1 | grep -e '\"steps' -e images_seen -e rror; exit ${{PIPESTATUS[0]}}"),
    ("issue 34.1: distill, --set channels_last=false --set batch_size=5", f"{F} distill --teacher none --set channels_last=false --set batch_size=5 --set threads=2 {SMALL} --out b5 2>&1 | grep -e '\"steps' -e images_seen -e rror; exit ${{PIPESTATUS[0]}}"),
    ("issue 34.1: the shape probe, batches 1-8 on 2 threads", f"python {REPO}/benchmarks/probe_conv_crash.py --threads 2 --hw 16"),
    ("issue 34.2: evaluate, ground truth holding id 25 in a corner", f"{F} evaluate --pred gt --gt gt25"),
    ("issue 34.2: evaluate, an all-255 ground truth", f"{F} evaluate --pred gt --gt gt255"),
    ("issue 34.3: distill --resume after its teacher was rewritten in place", f"cp t19.pt tch.pt && {F} distill --teacher tch.pt {SMALL} --out r34 >/dev/null 2>&1 && cp t19b.pt tch.pt && {F} distill --teacher tch.pt {SMALL} --out r34 --resume"),
    ("issue 34.3: the same with an ensemble, one member rewritten", f"cp t19.pt m1.pt && cp t19.pt m2.pt && {F} distill --teacher m1.pt --teacher m2.pt {SMALL} --out r34e >/dev/null 2>&1 && cp t19b.pt m2.pt && {F} distill --teacher m1.pt --teacher m2.pt {SMALL} --out r34e --resume"),
    ("issue 34.4: a finished prune resumed with another --ratio", f"{F} prune --checkpoint tiny_student.pt --ratio 0.3 --round-to 8 {SMALL} --out p34 >/dev/null 2>&1; {F} prune --checkpoint tiny_student.pt --ratio 0.5 --round-to 8 {SMALL} --out p34 --resume"),
    ("issue 34.4: the same with another --checkpoint", f"{F} prune --checkpoint other_student.pt --ratio 0.3 --round-to 8 {SMALL} --out p34 --resume"),
    ("issue 34.4: prune --resume pointed at a finished distill run", f"{F} prune --checkpoint tiny_student.pt --ratio 0.3 {SMALL} --out b3 --resume; rc=$?; ls b3 | tr '\\n' ' '; exit $rc"),
    ("issue 34.5: --resume in a folder of my config.json and metrics.jsonl", f"{F} distill --teacher none {SMALL} --out mine3 --resume; rc=$?; cat mine3/config.json mine3/metrics.jsonl; exit $rc"),
    ("issue 34.6: prune --target-params 50000 (the model has fewer)", f"{F} prune --checkpoint tiny_student.pt --target-params 50000 --out p6; rc=$?; ls p6; exit $rc"),
    ("issue 34.6: prune --target-params -1", f"{F} prune --checkpoint tiny_student.pt --target-params -1 --out p6"),
    ("issue 34.6: prune --target-params 0", f"{F} prune --checkpoint tiny_student.pt --target-params 0 --out p6"),
    ("issue 34.6: prune --target-macs -1", f"{F} prune --checkpoint tiny_student.pt --target-macs -1 --out p6"),
    ("issue 34.6: prune --target-latency 0", f"{F} prune --checkpoint tiny_student.pt --target-latency 0 --out p6"),
    ("issue 34.6: prune --target-latency -5", f"{F} prune --checkpoint tiny_student.pt --target-latency -5 --out p6"),
    ("issue 34.6: prune --sweep --target-params=-1,900", f"{F} prune --checkpoint tiny_student.pt --target-params=-1,900 --sweep --out p6"),
    ("issue 34.8: quantize --out newdir/i.pt", f"{F} quantize --checkpoint tiny_student.pt --out q/int8.pt --calibration-images 4 && ls q"),
    ("issue 34.8: quantize a NaN checkpoint", f"{F} quantize --checkpoint nan.pt --out q/nan_int8.pt; rc=$?; ls q; exit $rc"),
    ("issue 34.7: distill --teacher q/int8.pt", f"{F} distill --teacher q/int8.pt {SMALL} --out q7"),
    ("issue 34.7: distill, an int8 ensemble member", f"{F} distill --teacher t19.pt --teacher q/int8.pt {SMALL} --out q7"),
    ("issue 34.7: prune --teacher q/int8.pt", f"{F} prune --checkpoint tiny_student.pt --ratio 0.3 --teacher q/int8.pt {SMALL} --out q7"),
    ("issue 34.7: prune --checkpoint q/int8.pt", f"{F} prune --checkpoint q/int8.pt --ratio 0.3 {SMALL} --out q7"),
    ("issue 34.7: finetune --checkpoint q/int8.pt", f"{F} finetune --checkpoint q/int8.pt {SMALL} --out q7; rc=$?; ls q7; exit $rc"),
    ("--debug: the same error with its traceback", f"{F} --debug export --checkpoint nope.pt --out out 2>&1 | tail -1; exit ${{PIPESTATUS[0]}}"),
]
tmpl = str(T)
for name, cmd in cases:
    if len(sys.argv) > 1 and not any(k in name for k in sys.argv[1:]):
        continue
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    out = [l.split("\r")[-1].strip() for l in (p.stdout + "\n" + p.stderr).splitlines()]
    out = [l for l in out if l and not l.startswith(("predict:", "package:", "evaluate:")) or "error" in l]
    out = [l for l in out if "backslash" in l] or out
    tb = "Traceback" in p.stderr
    shown = " / ".join(out if len(out) <= 3 else [out[0], "...", *out[-2:]]).replace(tmpl + "/", "").replace(str(REPO) + "/", "").replace("|", "\\|")
    shown_cmd = cmd.replace(str(REPO) + "/", "").replace("|", "\\|")
    print(f"| {name} | `{shown_cmd}` | exit {p.returncode}{', TRACEBACK' if tb else ''}: {shown} |", flush=True)
