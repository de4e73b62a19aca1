"""`python -m cwnnk.bench` commands at tiny sizes: output, the agreement checks and their order
(checks before any time), exit verdicts. Nothing here asserts a timing."""

import re

import numpy as np

from cwnnk.bench.__main__ import main


def first_time_after_checks(lines, is_time):
    """True when every agreement line comes before the first line that reports a time."""
    checks = [i for i, line in enumerate(lines) if line.startswith("agreement")]
    times = [i for i, line in enumerate(lines) if is_time(line)]
    return bool(checks) and bool(times) and max(checks) < min(times)


def test_bench_nnk_runs_and_checks_agreement(capsys):
    ok = main(["nnk", "--n", "80", "--c", "2", "--d", "16", "--k", "6", "--seed", "3", "--baseline-nodes", "40"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert ok is True
    text = "\n".join(lines)
    for label in ("floor", "engine pynnk", "engine exact", "baseline", "agreement"):
        assert re.search(rf"^{label}", text, re.M), label
    assert re.search(r"supports equal the baseline's on 40/40 nodes", text)
    assert re.search(r"engine exact on 160 nodes: candidates equal the brute force's on 160, "
                     r"weights meet the reference problem's KKT conditions on 160", text)
    assert first_time_after_checks(lines, lambda line: re.search(r"\d\.\d+ s\b", line))
    assert re.search(r"40 of 160 nodes, scaled x4\.0", text)
    assert re.fullmatch(r"speedup \d+\.\d+", lines[-1])


def test_bench_cosine_all_nodes(capsys):
    assert main(["nnk", "--n", "60", "--c", "1", "--d", "8", "--k", "5", "--kernel", "cosine",
                 "--baseline-nodes", "1000"]) is True
    out = capsys.readouterr().out
    assert "on all nodes" in out and "60/60 nodes" in out


def test_agreement_tells_a_numerically_non_unique_optimum_from_a_difference():
    from cwnnk.bench.gpu import agreement
    from cwnnk.engine import nnk

    rng = np.random.default_rng(0)
    X = rng.normal(size=(1, 80, 3))
    X[0, 1] = X[0, 0] + 1e-9 * rng.normal(size=3)  # near-duplicates: K over both is singular in float64
    r = nnk(X[0], 8)
    indices, weights = r.indices[None], r.weights[None]
    both = [i for i in range(2, 80) if ({0, 1} <= set(indices[0, i][weights[0, i] > 0].tolist()))]
    assert both, "no node has both near-duplicates in its support"
    i, moved = both[0], weights.copy()
    p0, p1 = (list(indices[0, i]).index(j) for j in (0, 1))
    moved[0, i, p0], moved[0, i, p1] = moved[0, i, p0] + moved[0, i, p1], 0  # another optimum
    assert agreement(X, (indices, weights), (indices, moved)) == (0, 0.0, 1)

    far = next(m for m in range(2, 80) if not {0, 1} & set(indices[0, m].tolist()))
    wrong = weights.copy()
    wrong[0, far, np.argmax(wrong[0, far])] += 1e-6  # a well-conditioned node off by 1e-6
    differ, gap, ill = agreement(X, (indices, weights), (indices, wrong))
    assert (differ, ill) == (1, 0) and abs(gap - 1e-6) < 1e-12


def test_bench_gpu_runs_on_cpu_and_checks_agreement_first():
    import argparse

    from cwnnk.bench.gpu import bench_gpu

    lines = []
    ok = bench_gpu(argparse.Namespace(device="cpu", n=40, check_n=30, cpu_n=20, threads=1, k=10), out=lines.append)
    agreement = [line for line in lines if line.startswith("agreement")]
    assert ok is True
    assert len(agreement) == 17 and all("other supports or weights 0," in line for line in agreement)
    assert first_time_after_checks(lines, lambda line: line.rstrip().endswith(" s") and "C=" in line)
    assert lines[-1].startswith("speedup ") and float(lines[-1].split()[1]) > 0


def test_bench_scale_builds_a_real_store_and_checks_the_memory_bound(capsys):
    """`bench scale` at a tiny size: a real store, the real graphs stage, and the memory check's verdict."""
    args = ["scale", "--n", "120", "--layer", "layer3.1", "--threads", "1"]
    assert main(args) is True
    out = capsys.readouterr().out
    assert "C=256 channels x N=120 x D=64 (aggregate D=16384)" in out
    assert re.search(r"layer3\.1 channels on 100 nodes: candidates equal the brute force's on 100, "
                     r"weights meet the reference problem's KKT conditions on 100", out)
    assert re.search(r"layer3\.1 aggregate on 10 nodes: .* on 10, .* on 10 ", out)
    assert first_time_after_checks(out.splitlines(), lambda line: re.search(r"\d s\b", line))
    assert re.search(r"peak RSS \d+ MiB", out)
    assert main(args + ["--max-mib", "1"]) is False  # no process fits in 1 MiB: the check can fail


def test_bench_scale_extract_only_checks_the_store_and_measures_the_stage(capsys):
    """--extract-only: the store's samples agree with a direct forward pass, then the extract
    stage's own time and peak (its images made on demand, never held) against the layer's size."""
    args = ["scale", "--torchvision", "resnet18", "--image-size", "32", "--layer", "layer1.1.relu_1", "--n", "64",
            "--threads", "1", "--extract-only"]
    assert main(args) is True
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"agreement: layer1\.1\.relu_1 of 4 stored samples against a direct forward pass: largest "
                        r"difference \S+ \(values up to \S+\)", lines[0])
    # 64 images x 64 channels x 8 x 8 float32 = 1 MiB
    assert re.search(r"extract stage \d+ s, peak RSS \d+ MiB = [\d.]+x the layer's float32 size \(1 MiB\)", lines[1])
    assert not any(line.startswith("graphs stage") for line in lines)
    assert main(args + ["--max-mib", "1"]) is False


def test_bench_scale_streams_a_torchvision_layer_and_checks_it_without_holding_it(capsys):
    """`bench scale` on a torchvision model's node, streamed: the check reads the sampled channels
    alone and the aggregate's reference rows, and both agree."""
    args = ["scale", "--torchvision", "resnet18", "--image-size", "32", "--layer", "layer1.1.relu_1", "--n", "120",
            "--threads", "1", "--stream", "always", "--check-nodes", "40"]
    assert main(args) is True
    out = capsys.readouterr().out
    assert "C=64 channels x N=120 x D=64 (aggregate D=4096), k=25, CPU threads 1, streamed" in out
    assert re.search(r"layer1\.1\.relu_1 channels \(streamed\) on 40 nodes: candidates equal the brute force's on 40, "
                     r"weights meet the reference problem's KKT conditions on 40", out)
    assert re.search(r"layer1\.1\.relu_1 aggregate \(streamed, .*\) on 4 nodes: .* on 4, .* on 4 ", out)
    assert re.search(r"peak RSS / the layer's float32 size \(2 MiB, .*\): [\d.]+x; aggregate rows", out)


def test_a_fresh_process_reports_its_own_peak_not_its_parents():
    """The benches read each stage's peak in a spawned process; on Linux that process's ru_maxrss
    starts at its parent's peak, which would hide a stage smaller than the parent."""
    import multiprocessing

    from cwnnk.bench.common import peak_mib

    ballast = np.ones(1 << 27)  # 1 GiB, touched: this process's peak is at least that
    parent = peak_mib()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child = pool.apply(peak_mib)
    del ballast
    assert parent >= 1024 and child < parent - 512


def test_bench_pipeline_checks_the_graph_stage_before_the_stage_table(tmp_path, capsys):
    from conftest import write_config

    config = write_config(tmp_path / "tiny.yaml", tmp_path / "results")
    assert main(["pipeline", "--config", str(config), "--check-nodes", "40", "--repeat", "2"]) is True
    lines = capsys.readouterr().out.splitlines()
    checks = [line for line in lines if line.startswith("agreement")]
    assert len(checks) == 4  # channels and aggregate of each of the two layers
    assert all(re.search(r"candidates equal the brute force's on (\d+), .* on \1 ", line) for line in checks)
    assert first_time_after_checks(lines, lambda line: line.startswith(("train ", "graphs ")))
    assert re.fullmatch(r"graph stage / kNN floor: \d+\.\d+", lines[-1])
    runs = next(line for line in lines if line.startswith("runs, interleaved"))
    stage = re.search(r"graph stage (\d+\.\d+), (\d+\.\d+) s; kNN floor \d+\.\d+, \d+\.\d+ s$", runs)
    table = next(line for line in lines if line.startswith("graphs "))
    assert table.split()[1] == min(stage.groups(), key=float)  # the fastest run counts
    loo = next(re.fullmatch(r"LOO estimate, in the overlap stage: (\d+\.\d) ms of (\d+\.\d+) s .*", line)
               for line in lines if line.startswith("LOO estimate"))
    assert 0 < float(loo[1]) < 1e3 * float(loo[2])  # a step of the overlap stage, timed on the same graphs
