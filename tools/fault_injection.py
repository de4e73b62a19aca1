"""The fault matrix of issue #24 on a tiny config: each fault, what the workflow did, and
whether the final tables equal a clean run's (docs/reliability.md holds the last run's table).

    python tools/fault_injection.py [--workdir DIR] [--keep]

Runs Snakemake on this checkout, one run at a time, with tests/conftest.py's tiny config
restricted to one model (7 jobs to the tables); a few minutes on 2 cores. Kills use the
stages' test hook (cwnnk.atomic.PAUSE_ENV): a stage pauses once its output is complete under
its temporary name, and is killed there with SIGKILL. Recovery is what docs/reliability.md
says: `python -m cwnnk resume` with the killed run's arguments. Bit flips damage one finished
artifact of each kind, let Snakemake rerun its readers, then restore it.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "workflow"), str(REPO / "tests")]

from cwnnk.atomic import PAUSE_ENV  # noqa: E402

from conftest import TINY_CONFIG  # noqa: E402 - the tests' tiny experiment, the one source of it

M = "convnet-d0-wd0-s1"
GROUPS = ("kills", "bad_configs", "bad_files", "bit_flips", "external_faults")  # run in this order
TABLES = ("overlap", "channels", "pairwise")


class Matrix:
    def __init__(self, workdir):
        self.dir = Path(workdir)
        self.results = self.dir / "results"
        self.config = self.dir / "config.yaml"
        self.rows = []
        self.clean = None

    def write_config(self, **overrides):
        cfg = dict(TINY_CONFIG, results=str(self.results), sweep={"dropout": [0.0], "seeds": [1]}, **overrides)
        self.config.write_text(yaml.safe_dump(cfg))

    def cmd(self, *args, extra=()):
        targets = [*extra, *(self.results / "tables" / f"{t}.csv" for t in TABLES)]
        return [sys.executable, "-m", "snakemake", "-s", REPO / "Snakefile", "--directory", self.dir, *targets,
                "--cores", "1", "--configfile", self.config, *args]

    def snakemake(self, *args, env=None, extra=()):
        proc = subprocess.run(list(map(str, self.cmd(*args, extra=extra))), capture_output=True, text=True,
                              env=dict(os.environ, **(env or {})), timeout=900)
        return proc.returncode, proc.stdout + proc.stderr

    def tables(self):
        return [(self.results / "tables" / f"{t}.csv").read_bytes() if (self.results / "tables" / f"{t}.csv").exists()
                else None for t in TABLES]

    def temporaries(self):
        return sorted(self.results.rglob(".*.tmp-*"))

    def record(self, fault, outcome, extra=""):
        same = self.tables() == self.clean
        self.rows.append((fault, outcome + (f"; {extra}" if extra else ""), "yes" if same else "NO",
                          str(len(self.temporaries()))))
        print(f"{fault}: {self.rows[-1][1:]}", flush=True)

    def kill(self, rule, pattern, log):
        """SIGKILL a run of `rule` paused before its rename; recover; return the recovery's outcome."""
        proc = subprocess.Popen(list(map(str, self.cmd("--forcerun", rule))), start_new_session=True,
                                env=dict(os.environ, **{PAUSE_ENV: pattern}),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while "pausing before renaming" not in (log.read_text() if log.exists() else ""):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        left = len(self.temporaries())
        # The killed job's output is named: Snakemake does not remake a missing intermediate file
        # whose consumers are up to date.
        output = self.results / pattern.replace(".zarr", ".zarr/zarr.json")
        resume = [sys.executable, "-m", "cwnnk", "resume", *map(str, self.cmd(extra=[output])[3:])]
        proc = subprocess.run(resume, capture_output=True, text=True, timeout=900,
                              env=dict(os.environ, PYTHONPATH=str(REPO / "workflow")))
        return f"killed with {left} temporary left; python -m cwnnk resume rc {proc.returncode}"

    def run(self, groups=GROUPS):
        self.write_config()
        rc, out = self.snakemake()
        assert rc == 0, out[-3000:]
        self.clean = self.tables()
        self.rows.append(("none (clean run)", f"rc {rc}", "yes", str(len(self.temporaries()))))
        for group in groups:
            getattr(self, group)()
        return self.rows

    def kills(self):
        logs = self.results / "logs"
        for rule, pattern, log in [("train", f"models/{M}/checkpoint.pt", logs / "train" / f"{M}.log"),
                                   ("extract", f"activations/{M}.zarr", logs / "extract" / f"{M}.log"),
                                   ("graphs", f"graphs/{M}/conv1", logs / "graphs" / M / "conv1.log"),
                                   ("overlap", f"overlap/{M}/conv2.json", logs / "overlap" / M / "conv2.log"),
                                   ("tables", "tables/channels.csv", logs / "tables.log")]:
            self.record(f"SIGKILL during {rule}", self.kill(rule, pattern, log))

    def config_fault(self, fault, expect, **overrides):
        self.write_config(**overrides)
        rc, out = self.snakemake()
        self.write_config()
        said = next((line.strip() for line in out.splitlines() if expect in line), "")
        self.record(fault,
                    f"rc {rc}, stopped before any job: {said[:150]}" if rc and said else f"rc {rc}: {out[-200:]}")

    def bad_configs(self):
        self.config_fault("graphs.k = 300 > N = 60", "graphs.k", graphs={"k": 300})
        self.config_fault("missing external checkpoint", "external.0.path",
                          external=[{"name": "ext", "path": str(self.dir / "gone.pt"), "model": TINY_CONFIG["model"]}])
        self.config_fault("CIFAR-10 folder missing", "dataset.root",
                          dataset={"name": "cifar10", "root": str(self.dir / "nowhere"), "n_train": 100})
        self.config_fault("unknown layer name", "unknown layer", extract={"n_samples": 60, "layers": ["conv9"]})
        reordered = {key: TINY_CONFIG["dataset"][key] for key in reversed(list(TINY_CONFIG["dataset"]))}
        model = {"arch": "convnet", "layers": [dict(reversed(list(layer.items())))
                                               for layer in TINY_CONFIG["model"]["layers"]]}
        self.write_config(dataset=reordered, model=model)
        rc, out = self.snakemake("-n")
        self.write_config()
        self.record("same config, keys in another order", "rc 0, nothing to be done" if "Nothing to be done" in out
                    else f"rc {rc}: jobs would rerun")
        self.config.write_text("graphs:\n  k: [8\n")
        shutil.copy(self.config, self.dir / "broken.yaml")
        proc = subprocess.run([sys.executable, "-m", "cwnnk.preflight", self.dir / "broken.yaml"], capture_output=True,
                              text=True, env=dict(os.environ, PYTHONPATH=str(REPO / "workflow")))
        self.write_config()
        self.record("YAML syntax error", f"python -m cwnnk.preflight: {proc.stdout.strip().split(': ', 1)[1][:90]}")

    def failing_job(self, fault, log, expect, damage, repair):
        damage()
        rc, out = self.snakemake("--forcerun", "graphs")  # the store is unchanged for Snakemake
        # Either graphs job may be the one that failed (a damaged store fails both; Snakemake stops at the first).
        text = "\n".join(path.read_text() for path in log.parent.glob("*.log") if "Traceback" in path.read_text())
        logged = "traceback in log" if "Traceback" in text else "NO traceback in log"
        said = next((line.strip() for line in text.splitlines() if expect in line), "(not in log)")
        repair()
        graphs = [self.results / "graphs" / M / layer for layer in ("conv1", "conv2")]
        rc2, _ = self.snakemake("--rerun-incomplete", extra=graphs)
        self.record(fault, f"job fails (rc {rc}), {logged}: {said[said.find(' ERROR ') + 7:][:150]}",
                    f"repaired, rerun rc {rc2}")

    def bad_files(self):
        import numpy as np

        store = self.results / "activations" / f"{M}.zarr"
        chunk = store / "train" / "conv1" / "c.0.0.0.0"
        saved = {}

        def truncate_chunk():
            saved["chunk"] = chunk.read_bytes()
            chunk.write_bytes(saved["chunk"][:10])

        def nan_channel():
            import zarr

            saved["store"] = self.dir / "store-backup"
            shutil.copytree(store, saved["store"])
            values = zarr.open_array(str(store / "train" / "conv1"), mode="r+")
            block = values[:16, 2]
            block[0, 0, 0] = np.nan
            values[:16, 2] = block

        def all_nan_channel():
            import zarr

            shutil.copytree(store, saved["store"], dirs_exist_ok=True)
            zarr.open_array(str(store / "train" / "conv1"), mode="r+")[:, 2] = np.nan

        def restore_store():
            shutil.rmtree(store)
            shutil.copytree(saved["store"], store)
            shutil.rmtree(saved["store"])

        graphs_log = self.results / "logs" / "graphs" / M / "conv1.log"
        self.failing_job("truncated Zarr chunk", graphs_log, "ERROR", truncate_chunk,
                         lambda: chunk.write_bytes(saved["chunk"]))
        self.failing_job("NaN in a channel", graphs_log, "ERROR", nan_channel, restore_store)
        self.failing_job("all-NaN channel", graphs_log, "ERROR", all_nan_channel, restore_store)

    def flipped(self, fault, path, rerun, log, extra=()):
        """Flip one bit in the middle of a finished artifact, let Snakemake rerun its readers (`rerun`: the
        arguments that make it; a copy without mtimes does the same), restore the file, then rerun them."""
        original = path.read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        rc, _ = self.snakemake(*rerun, extra=extra)
        after = [original if table == bytes(data) else table for table in self.tables()]  # the damage itself
        text = log.read_text() if log.exists() else ""
        said = next((line for line in text.splitlines() if " ERROR " in line), "(not in log)")
        path.write_bytes(original)
        rc2, _ = self.snakemake("--rerun-incomplete", *rerun, extra=extra)  # the failed job's output is gone
        tables = ("unchanged" if after == self.clean else
                  "removed by Snakemake before its job" if None in after else "CHANGED")
        self.record(fault, f"job fails (rc {rc}), tables {tables}: {said[said.find(' ERROR ') + 7:][:150]}",
                    f"restored, rerun rc {rc2}")

    def bit_flips(self):
        """One flipped bit in each kind of artifact a later stage reads: the named error, never other tables."""
        logs = self.results / "logs"
        chunk = self.results / "activations" / f"{M}.zarr" / "train" / "conv1" / "c.0.0.0.0"
        self.flipped("1-bit flip in a Zarr chunk, then --forcerun graphs", chunk, ["--forcerun", "graphs"],
                     logs / "graphs" / M / "conv1.log")
        checkpoint = self.results / "models" / M / "checkpoint.pt"
        # writing the flipped file gives it a newer mtime, as `touch` does: Snakemake reruns its readers
        self.flipped("1-bit flip in checkpoint.pt, then touch", checkpoint, [], logs / "extract" / f"{M}.log")
        self.flipped("1-bit flip in knn.npz, then --forcerun overlap",
                     self.results / "graphs" / M / "conv1" / "knn.npz", ["--forcerun", "overlap"],
                     logs / "overlap" / M / "conv1.log")
        self.flipped("1-bit flip in an overlap JSON, then --forcerun tables",
                     self.results / "overlap" / M / "conv1.json", ["--forcerun", "tables"], logs / "tables.log")
        self.flipped("1-bit flip in overlap.csv, then --forcerun generalization",
                     self.results / "tables" / "overlap.csv", ["--forcerun", "generalization"],
                     logs / "generalization.log", extra=[self.results / "tables" / "generalization.csv"])

    def external_faults(self):
        import torch

        from cwnnk.config import Experiment, validate
        from cwnnk.models import build_model, save_checkpoint

        good = self.dir / "external.pt"
        spec = Experiment.from_config(validate(dict(TINY_CONFIG, results="r"))).models[M]["spec"]
        torch.manual_seed(0)
        save_checkpoint(good, build_model(spec), spec)
        ext = [{"name": "ext", "path": str(self.dir / "ext-input.pt"), "model": TINY_CONFIG["model"]}]
        log = self.results / "logs" / "import_checkpoint" / "ext.log"
        for fault, content in [("truncated checkpoint", good.read_bytes()[:1000]),
                               ("random bytes as checkpoint", np_random_bytes()),
                               ("malicious pickle as checkpoint", malicious_pickle())]:
            (self.dir / "ext-input.pt").write_bytes(content)
            self.write_config(external=ext)
            rc, _ = self.snakemake(extra=[self.results / "models" / "ext" / "metrics.json"])
            text = log.read_text() if log.exists() else ""
            said = next((line for line in text.splitlines() if " ERROR " in line), "(not in log)")
            self.write_config()
            self.record(fault, f"import fails (rc {rc}), {'traceback in log' if 'Traceback' in text else 'NO log'}: "
                               f"{said[said.find(' ERROR ') + 7:][:150]}")
            shutil.rmtree(self.results / "models" / "ext", ignore_errors=True)
        # Disk full: simulated in-process (the test suite does the same), as no tmpfs is at hand.
        code = ("import errno, numpy as np; from cwnnk import graphs; from cwnnk.params import GraphParams;"
                "graphs.np.savez = lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, 'No space left on "
                "device'));\ntry: graphs.build_layer_graphs(%r, 'conv1', %r, GraphParams(k=8, device='cpu'), "
                "log=lambda m: None)\nexcept OSError as e: print(e)")
        out = subprocess.run([sys.executable, "-c", code % (str(self.results / "activations" / f"{M}.zarr"),
                                                            str(self.dir / "full" / "conv1"))],
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO / "workflow")))
        self.record("disk full while writing graphs", f"OSError: {out.stdout.strip()[:150]}")


def np_random_bytes():
    import numpy as np

    return np.random.default_rng(0).bytes(4096)


def malicious_pickle():
    import io
    import pickle

    class Exploit:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    buffer = io.BytesIO()
    pickle.dump(Exploit(), buffer)
    return buffer.getvalue()


def markdown(rows):
    lines = ["| fault | outcome | tables equal a clean run's | `.tmp-*` left |", "| --- | --- | --- | --- |"]
    lines += [f"| {fault} | {outcome.replace('|', '/')} | {same} | {left} |" for fault, outcome, same, left in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="run here (default: a temporary folder, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=GROUPS, help="run these groups of faults")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cwnnk-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        rows = Matrix(workdir).run(args.only)
    finally:
        if not (args.workdir or args.keep):
            shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(rows))
    return 0 if all(same == "yes" and left == "0" for _, _, same, left in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
