"""`bench train`: one training run of the default experiment on each CPU code path and thread count.

Each setting runs in its own interpreter, since torch reads its code path once, at import
(cwnnk.cpu). It prints the wall time of each against the pinned path with one thread (the
workflow's setting), and whether the trained weights are bitwise equal to that baseline's.
"""

import json
import os
import subprocess
import sys

SETTINGS = (("avx2", 1), ("avx2", 2), ("native", 1), ("native", 2))

_CHILD = r"""
import hashlib, json, sys, tempfile, time
from pathlib import Path
from cwnnk.cpu import pin_code_path
code_path, threads, config_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pin_code_path(code_path)
import torch
import yaml
from cwnnk.config import Experiment, validate
torch.set_num_threads(threads)
exp = Experiment.from_config(validate(yaml.safe_load(open(config_path))))
model = next(iter(exp.models))
params = exp.train(model).replace(save_epochs=(), untrained_twin=False, device="cpu")
from cwnnk.train import run_train
with tempfile.TemporaryDirectory() as work:
    start = time.perf_counter()
    run_train(exp.models[model], params, Path(work) / "c.pt", Path(work) / "m.json", lambda *a: None)
    seconds = time.perf_counter() - start
    state = torch.load(Path(work) / "c.pt", map_location="cpu", weights_only=False)["state_dict"]
    metrics = json.loads((Path(work) / "m.json").read_text())["final"]
digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in state.values())).hexdigest()[:16]
print(json.dumps(dict(seconds=seconds, digest=digest, test_acc=metrics.get("test_acc"),
                      capability=torch.backends.cpu.get_cpu_capability())))
"""


def run_setting(code_path, threads, config):
    """Train in a fresh interpreter; its JSON line (seconds, digest, test_acc, capability)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")}
    out = subprocess.run([sys.executable, "-c", _CHILD, code_path, str(threads), config], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_train(args):
    results = {setting: run_setting(*setting, args.config) for setting in SETTINGS}
    base = results[SETTINGS[0]]
    print(f"one training run of the first model of {args.config} on the CPU; baseline: pinned avx2, 1 thread")
    print(f"{'code path':>10} {'threads':>7} {'ATen':>7} {'seconds':>8} {'ratio':>6} {'test acc':>8}  weights")
    for (code_path, threads), r in results.items():
        same = "= baseline" if r["digest"] == base["digest"] else "differ"
        print(f"{code_path:>10} {threads:>7} {r['capability']:>7} {r['seconds']:8.1f} "
              f"{r['seconds'] / base['seconds']:6.2f} {r['test_acc']:8.4f}  {r['digest']} {same}")
    return True
