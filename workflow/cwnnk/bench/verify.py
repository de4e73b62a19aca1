"""`python -m cwnnk.bench verify`: what content verification costs a finished run (docs/reliability.md).

Each check is timed on the run's own artifacts and counted as often as the workflow makes it:

    checkpoint.pt   sha256 when written, and on every load (extract, and pruning where the model is pruned)
    store chunks    CRC32C when written, and when read (graphs, and pruning where the model is pruned)
    graph files     sha256 of every .npz when written, of knn.npz when the overlap stage reads it
    JSON artifacts  the content digest when written, and on every read (summary.json by overlap; an overlap
                    JSON by tables and pruning; metrics.json by tables and on every checkpoint load)
    tables          sha256 when written, and TABLE_READS times on read (overlap.csv's count, the most read)

The baseline is the run's own job time: the wall seconds of every job in results/benchmarks.
"""

import json
import time
from pathlib import Path

TABLE_READS = 4  # overlap.csv: generalization, claims (twice: its rows and answer.csv), figures


def _seconds(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _crc32c(path):
    import google_crc32c  # zarr's Crc32cCodec computes it over the chunk's encoded bytes, less its 4-byte tail

    data = path.read_bytes()
    start = time.perf_counter()
    google_crc32c.value(data[:-4])
    return time.perf_counter() - start


def _digest_seconds(path, written=False):
    """Seconds of a JSON artifact's digest on read, or (written) of the extra work write_json does for it:
    a round trip through its JSON text (indented, sorted keys), then the digest."""
    from cwnnk.atomic import CHECKSUM_KEY, content_digest

    obj = json.loads(path.read_text())
    obj.pop(CHECKSUM_KEY, None)
    if not written:
        return _seconds(content_digest, obj)
    return _seconds(lambda: content_digest(json.loads(json.dumps(obj, indent=2, sort_keys=True, default=str))))


def _json_cost(path, reads):
    return _digest_seconds(path, written=True) + reads * _digest_seconds(path)


def _sha256(path):
    from cwnnk.provenance import sha256_file

    path.read_bytes()  # from the page cache, as a stage that has just written or is about to read it
    return _seconds(sha256_file, path)


def job_seconds(results):
    """The wall seconds of every job of a run, from Snakemake's benchmark files."""
    from cwnnk.results_page import job_times

    return sum(job_times(results)[1].values())


def verification_seconds(results):
    """{check: seconds} of content verification over the whole run in `results`."""
    results = Path(results)
    pruned = {path.stem for path in (results / "pruning").glob("*.csv")}
    cost = dict.fromkeys(("checkpoints", "store chunks", "graph files", "JSON artifacts", "tables"), 0.0)
    for checkpoint in sorted((results / "models").glob("*/checkpoint.pt")):
        model = checkpoint.parent.name
        loads = int((results / "activations" / f"{model}.zarr").exists()) + int(model in pruned)
        cost["checkpoints"] += (1 + loads) * _sha256(checkpoint)
        metrics = checkpoint.with_name("metrics.json")
        cost["JSON artifacts"] += _json_cost(metrics, 1 + loads)  # read by tables and on each load
    for store in sorted((results / "activations").glob("*.zarr")):
        reads = 1 + int(store.stem in pruned)
        chunks = [p for p in store.rglob("c.*") if p.is_file()]
        cost["store chunks"] += (1 + reads) * sum(_crc32c(p) for p in chunks)
    for summary in sorted((results / "graphs").glob("*/*/summary.json")):
        folder = summary.parent
        cost["graph files"] += sum(_sha256(p) for p in folder.glob("*.npz")) + _sha256(folder / "knn.npz")
        cost["JSON artifacts"] += _json_cost(summary, 1)
    for path in sorted((results / "overlap").glob("*/*.json")):
        cost["JSON artifacts"] += _json_cost(path, 1 + int(path.parent.name in pruned))
    for path in sorted([*(results / "tables").glob("*.csv"), *(results / "pruning").glob("*.csv")]):
        cost["tables"] += (1 + TABLE_READS) * _sha256(path)
    return cost


def bench_verify(args):
    results = Path(args.results)
    if not (results / "benchmarks").is_dir():
        print(f"{results}: no benchmarks folder; run the workflow first (snakemake --cores all)")
        return False
    cost = verification_seconds(results)
    jobs = job_seconds(results)
    print(f"content verification of {results} (each check timed on its artifacts, times the checks the run makes)")
    for check, seconds in cost.items():
        print(f"  {check:16s} {seconds:8.2f} s")
    total = sum(cost.values())
    print(f"  {'total':16s} {total:8.2f} s of {jobs:.0f} s of job time: ratio {total / jobs:.4f} "
          f"({100 * total / jobs:.2f} %)")
    return True
