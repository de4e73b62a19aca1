"""The workflow runs on a real SLURM cluster through snakemake-executor-plugin-slurm.

A single-node cluster (munged, MariaDB + slurmdbd, slurmctld, slurmd) is started on
this machine by tests/slurm/cluster.py. The workflow is run twice with the same
config, once locally and once with the project's SLURM profile
(workflow/profiles/slurm), and the test checks that

  * every job that has an action went through sbatch: each one has a SLURM job id
    in Snakemake's log, its SLURM log file, and a COMPLETED record in `sacct` with
    the job name of the run, the rule in the comment, the account and partition
    taken from the environment by the profile, and the threads, memory and GPUs
    Snakemake asked for;
  * the outputs of both runs are byte for byte identical.

`run_workflow(workdir, executor)` runs the project's own Snakefile on the tiny experiment
of tests/conftest.py (one model: train, extract, graphs, overlap, tables, solvers,
manifolds, figures); the tables must be identical between the two executors.

Where the cluster cannot start, the test is skipped with the reason, or fails when
CI=true. Run it with:  pytest -m slurm tests/test_slurm.py
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO, write_config

PROFILE = REPO / "workflow" / "profiles" / "slurm"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _load_cluster_module():
    path = Path(__file__).resolve().parent / "slurm" / "cluster.py"
    spec = importlib.util.spec_from_file_location("cwnnk_test_slurm_cluster", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cluster_mod = _load_cluster_module()

# Two stand-in GPUs and a "gpu" partition, so the GPU mapping goes through sbatch too.
slurm_cluster = cluster_mod.slurm_cluster_fixture(gpus=2)


# ----------------------------------------------------------- the workflow under test
@dataclass
class WorkflowRun:
    workdir: Path
    outputs: Path                # every file below must be identical across executors
    log: str                     # Snakemake's output (stderr + stdout)
    gpu_rules: set = field(default_factory=set)  # rules whose jobs must hold GPUs on SLURM
    seconds: float = 0.0


def snakemake_command(executor: str) -> list[str]:
    """How the test calls Snakemake for each executor (independent of the workflow)."""
    cmd = [sys.executable, "-m", "snakemake"]
    if executor == "local":
        return cmd + ["--cores", "2", "--workflow-profile", "none"]
    if executor == "slurm":
        return cmd + [
            "--workflow-profile", str(PROFILE),
            # test-only speed-ups over the profile's cluster-friendly values:
            "--slurm-init-seconds-before-status-checks", "1",
            "--seconds-between-status-checks", "1",
            "--latency-wait", "5",
            "--slurm-keep-successful-logs",
        ]
    raise ValueError(f"unknown executor {executor!r}")


def run_workflow(workdir: Path, executor: str) -> WorkflowRun:
    """Run the project's tiny experiment (one model, CPU) in `workdir` with `executor`
    ('local' or 'slurm'); its tables are what must agree between the two."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(workdir / "config.yaml", workdir / "results", sweep={"dropout": [0.0], "seeds": [1]})
    cmd = snakemake_command(executor) + ["-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                                         "--configfile", str(config)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - t0
    log = proc.stderr + proc.stdout
    if proc.returncode != 0:
        raise AssertionError(f"{executor} run failed ({proc.returncode}): {' '.join(cmd)}\n{log[-8000:]}")
    return WorkflowRun(workdir, workdir / "results" / "tables", log, gpu_rules=set(), seconds=seconds)


# ------------------------------------------------------------------- log parsing
_JOB_BLOCK = re.compile(r"^(?P<local>local)?rule (?P<rule>\w+):\n(?P<body>(?:[ \t]+\S.*\n?)+)", re.M)
_SUBMITTED = re.compile(r"Job (?P<jobid>\d+) has been submitted with SLURM jobid (?P<slurm>\d+) "
                        r"\(log: (?P<log>[^)]+)\)")


@dataclass
class SnakemakeJob:
    rule: str
    jobid: int
    local: bool
    wildcards: str = ""
    threads: int = 1
    resources: dict = field(default_factory=dict)


def _parse_jobs(log: str) -> dict[int, SnakemakeJob]:
    jobs = {}
    for m in _JOB_BLOCK.finditer(log):
        fields = {}
        for line in m["body"].splitlines():
            key, _, value = line.strip().partition(": ")
            fields[key] = value
        if "jobid" not in fields:
            continue
        resources = {}
        for item in re.split(r",\s*", fields.get("resources", "")):
            key, _, value = item.partition("=")
            if key:
                resources[key.strip()] = value.strip()
        job = SnakemakeJob(m["rule"], int(fields["jobid"]), bool(m["local"]),
                           fields.get("wildcards", ""), int(fields.get("threads", 1)), resources)
        jobs[job.jobid] = job
    return jobs


def _job_counts(log: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints before running."""
    m = re.search(r"Job stats:\n(?:job\s+count\n)?-+\s+-+\n(?P<rows>(?:\S+\s+\d+\n)+)", log)
    assert m, "no 'Job stats' table in Snakemake's log"
    rows = dict(line.split() for line in m["rows"].splitlines())
    rows.pop("total", None)
    return {rule: int(n) for rule, n in rows.items()}


def _sacct(cluster, ids: list[str]) -> dict[str, dict]:
    fmt = "JobIDRaw,JobName,State,ExitCode,Account,Partition,AllocTRES,Comment"
    out = subprocess.run(["sacct", "-X", "--parsable2", "--noheader", f"--format={fmt}",
                          "-j", ",".join(ids)], env=cluster.env(), capture_output=True,
                         text=True, check=True, timeout=60).stdout
    rows = {}
    for line in out.splitlines():
        values = line.split("|")
        rows[values[0]] = dict(zip(fmt.split(","), values))
    return rows


def _tres(alloc: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in alloc.split(",") if "=" in item)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -------------------------------------------------------------------------- test
def test_workflow_runs_on_slurm_like_locally(slurm_cluster, tmp_path, monkeypatch):
    cluster = slurm_cluster
    node = cluster.node
    # the profile's site settings, taken from the environment
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    monkeypatch.setenv("PATH", cluster.env()["PATH"])
    monkeypatch.setenv("CWNNK_SLURM_ACCOUNT", cluster_mod.ACCOUNT)
    monkeypatch.setenv("CWNNK_SLURM_PARTITION", cluster_mod.PARTITION)
    monkeypatch.setenv("CWNNK_SLURM_GPU_PARTITION", cluster_mod.GPU_PARTITION)
    # a test node is small: clamp the profile's requests to what it has
    # one thread per job, as in the local run: training is bitwise reproducible only at equal threads
    monkeypatch.setenv("CWNNK_SLURM_MAX_THREADS", "1")
    monkeypatch.setenv("CWNNK_SLURM_MAX_MEM_MB", node["RealMemory"])
    for var in ("CWNNK_SLURM_GPUS", "CWNNK_SLURM_GPU_MODEL", "SBATCH_ACCOUNT", "SBATCH_PARTITION"):
        monkeypatch.delenv(var, raising=False)

    local = run_workflow(tmp_path / "local", "local")
    slurm = run_workflow(tmp_path / "slurm", "slurm")
    print(f"\nlocal run {local.seconds:.1f}s, SLURM run {slurm.seconds:.1f}s")

    # 1. every job with an action went through sbatch, exactly once
    expected = {rule: n for rule, n in _job_counts(local.log).items()}
    jobs = _parse_jobs(slurm.log)
    remote = {j.jobid: j for j in jobs.values() if not j.local}
    local_rules = {j.rule for j in jobs.values() if j.local}
    for rule in local_rules:
        expected.pop(rule, None)
    submissions = list(_SUBMITTED.finditer(slurm.log))
    submitted = {int(m["jobid"]): m for m in submissions}
    assert submitted, f"no job was submitted through sbatch:\n{slurm.log[-4000:]}"
    assert len(submissions) == len(submitted), (
        f"some jobs were submitted more than once (a failed attempt was retried):\n{slurm.log[-6000:]}")
    assert set(submitted) == set(remote), (
        f"jobs without a SLURM id: {sorted(set(remote) - set(submitted))}, "
        f"unknown submissions: {sorted(set(submitted) - set(remote))}")
    per_rule = {}
    for j in remote.values():
        per_rule[j.rule] = per_rule.get(j.rule, 0) + 1
    assert per_rule == expected, f"SLURM jobs per rule {per_rule} != local jobs per rule {expected}"
    slurm_ids = {jobid: m["slurm"] for jobid, m in submitted.items()}
    assert len(set(slurm_ids.values())) == len(slurm_ids), "two jobs share a SLURM id"

    # 2. SLURM's accounting agrees: completed, named after the run, right rule,
    #    account and partition from the profile, threads/memory/GPUs as asked
    run_ids = set(re.findall(r"SLURM run ID: (\S+)", slurm.log))
    assert len(run_ids) == 1, f"expected one SLURM run ID in the log, got {run_ids}"
    records = _sacct(cluster, sorted(slurm_ids.values()))
    for jobid, slurm_id in sorted(slurm_ids.items()):
        job, rec = remote[jobid], records.get(slurm_id)
        where = f"rule {job.rule} ({job.wildcards or 'no wildcards'}), SLURM job {slurm_id}"
        assert rec is not None, f"{where}: not in sacct"
        assert rec["State"] == "COMPLETED" and rec["ExitCode"] == "0:0", f"{where}: {rec}"
        assert rec["JobName"] in run_ids, f"{where}: job name {rec['JobName']}"
        assert rec["Comment"].startswith(f"rule_{job.rule}"), f"{where}: comment {rec['Comment']}"
        assert rec["Account"] == cluster_mod.ACCOUNT, f"{where}: account {rec['Account']}"
        tres = _tres(rec["AllocTRES"])
        assert tres.get("cpu") == str(job.threads), f"{where}: {tres} vs threads={job.threads}"
        mem_mb = int(job.resources["mem_mb"])
        assert tres.get("mem") in (f"{mem_mb}M", f"{mem_mb / 1024:g}G"), f"{where}: {tres} vs mem_mb={mem_mb}"
        if job.rule in slurm.gpu_rules:
            assert tres.get("gres/gpu") == job.resources.get("gpu", "?"), f"{where}: {tres}"
            assert rec["Partition"] == cluster_mod.GPU_PARTITION, f"{where}: {rec['Partition']}"
        else:
            assert "gres/gpu" not in tres, f"{where}: {tres}"
            assert rec["Partition"] == cluster_mod.PARTITION, f"{where}: {rec['Partition']}"
        # the job's own SLURM log, named by its id
        slurm_log = Path(submitted[jobid]["log"])
        assert slurm_log.name == f"{slurm_id}.log" and slurm_log.is_file(), f"{where}: {slurm_log}"
        assert f"rule_{job.rule}" in slurm_log.parts, f"{where}: {slurm_log}"
    gpu_jobs = [j for j in remote.values() if j.rule in slurm.gpu_rules]
    if slurm.gpu_rules:
        assert gpu_jobs, "the config asks for GPUs but no GPU rule ran"

    # 3. same outputs as the local run
    want, got = _files(local.outputs), _files(slurm.outputs)
    assert want, f"the local run wrote nothing under {local.outputs}"
    assert sorted(got) == sorted(want), f"different files: {sorted(set(got) ^ set(want))}"
    differ = [name for name in want if got[name] != want[name]]
    assert not differ, f"outputs differ between local and SLURM runs: {differ}"
