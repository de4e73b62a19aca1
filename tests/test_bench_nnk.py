"""`python -m cwnnk.bench nnk` on a tiny layer: output format and the agreement check (not timing)."""

import re

from cwnnk.bench import main


def test_bench_nnk_runs_and_checks_agreement(capsys):
    ok = main(["nnk", "--n", "80", "--c", "2", "--d", "16", "--k", "6", "--seed", "3", "--baseline-nodes", "40"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert ok is True
    text = "\n".join(lines)
    for label in ("floor", "engine pynnk", "engine exact", "baseline", "agreement"):
        assert re.search(rf"^{label}", text, re.M), label
    assert re.search(r"supports equal the baseline's on 40/40 nodes", text)
    assert re.search(r"40 of 160 nodes, scaled x4\.0", text)
    assert re.fullmatch(r"speedup \d+\.\d+", lines[-1])


def test_bench_cosine_all_nodes(capsys):
    assert main(["nnk", "--n", "60", "--c", "1", "--d", "8", "--k", "5", "--kernel", "cosine",
                 "--baseline-nodes", "1000"]) is True
    out = capsys.readouterr().out
    assert "on all nodes" in out and "60/60 nodes" in out


def test_bench_gpu_runs_on_cpu_and_checks_agreement_first():
    import argparse

    from cwnnk.bench import bench_gpu

    lines = []
    bench_gpu(argparse.Namespace(device="cpu", n=40, check_n=30, cpu_n=20, threads=1, k=10), out=lines.append)
    agreement = [line for line in lines if line.startswith("agreement")]
    assert len(agreement) == 17 and all("other supports 0" in line for line in agreement)
    first_time = next(i for i, line in enumerate(lines) if line.rstrip().endswith(" s") and "C=" in line)
    assert first_time > max(i for i, line in enumerate(lines) if line.startswith("agreement"))
    assert lines[-1].startswith("speedup ") and float(lines[-1].split()[1]) > 0


def test_bench_scale_builds_a_real_store_and_checks_the_memory_bound(capsys):
    """`bench scale` at a tiny size: a real store, the real graphs stage, and the memory check's verdict."""
    args = ["scale", "--n", "120", "--layer", "layer3.1", "--threads", "1"]
    assert main(args) is True
    out = capsys.readouterr().out
    assert "C=256 channels x N=120 x D=64 (aggregate D=16384)" in out
    assert re.search(r"peak RSS \d+ MiB", out)
    assert main(args + ["--max-mib", "1"]) is False  # no process fits in 1 MiB: the check can fail
