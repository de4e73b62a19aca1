"""cwnnk.manifolds: the F5 synthetic-manifold experiment on tiny sizes."""

import numpy as np
import pytest

from cwnnk.manifolds import COLUMNS, run_manifold_experiment, write_manifold_table
from cwnnk.params import GraphParams, ManifoldParams
from cwnnk.tables import read_table


@pytest.fixture(scope="module")
def rows():
    return run_manifold_experiment(ManifoldParams(dims=(1, 3), n=200, D=16, seed=0,
                                                  graphs=GraphParams(k=12, device="cpu")))


def test_rows_and_columns(rows):
    assert len(rows) == 2 * 2 * 2  # embeddings x dims x solvers
    assert all(set(COLUMNS) <= set(r) for r in rows)
    keys = {(r["embedding"], r["dim"], r["solver"]) for r in rows}
    assert keys == {(e, d, s) for e in ("linear", "curved") for d in (1, 3) for s in ("exact", "pynnk")}
    for r in rows:
        assert (r["n"], r["D"], r["k"]) == (200, 16, 12)
        assert 0 < r["degree_mean"] <= 12 and r["degree_std"] >= 0
        assert r["degree_q25"] <= r["degree_median"] <= r["degree_q75"]
        assert r["kkt_failed"] == 0 or r["solver"] == "pynnk"


def test_exact_degree_at_least_pynnk(rows):
    by = {(r["embedding"], r["dim"], r["solver"]): r for r in rows}
    diffs = [by[e, d, "exact"]["degree_mean"] - by[e, d, "pynnk"]["degree_mean"]
             for e in ("linear", "curved") for d in (1, 3)]
    assert np.mean(diffs) >= 0
    assert min(diffs) >= -0.05  # the pruning-only solver never finds more on average


def test_degree_grows_with_dimension(rows):
    by = {(r["embedding"], r["dim"], r["solver"]): r["degree_mean"] for r in rows}
    for e in ("linear", "curved"):
        assert by[e, 3, "exact"] > by[e, 1, "exact"]


def test_twonn_near_truth(rows):
    for r in rows:
        assert abs(r["twonn_id"] - r["dim"]) <= 0.5 * r["dim"] + 0.5, r
    by = {(r["embedding"], r["dim"]): set() for r in rows}
    for r in rows:
        by[r["embedding"], r["dim"]].add(r["twonn_id"])
    assert all(len(v) == 1 for v in by.values())  # same kNN distances for both solvers


def test_write_table(tmp_path):
    path = write_manifold_table(tmp_path / "manifolds.csv",
                                ManifoldParams(dims=(2,), n=120, D=8, graphs=GraphParams(k=8, device="cpu")),
                                embeddings=("linear",))
    t = read_table(path)
    assert list(t)[: len(COLUMNS)] == list(COLUMNS)
    assert t["solver"].tolist() == ["exact", "pynnk"] and t["dim"].tolist() == [2, 2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="embedding"):
        run_manifold_experiment(ManifoldParams(dims=(1,), n=50), embeddings=("sphere",))
    with pytest.raises(ValueError, match="figures.manifold_dims"):
        ManifoldParams(dims=(), n=50)
