"""cwnnk.tables: CSV rows of dicts in, numpy columns out, exactly."""

import math

import numpy as np
import pytest

from cwnnk.tables import n_rows, read_table, select, write_table


def random_floats(n, seed=0):
    """Doubles from random bit patterns (every exponent, subnormals included), finite only."""
    bits = np.random.default_rng(seed).integers(0, 2**63, n, dtype=np.uint64, endpoint=False)
    values = bits.view(np.float64)
    return values[np.isfinite(values)]


def test_round_trip_exact(tmp_path):
    floats = random_floats(500)
    rows = [dict(model=f"m{i % 3}", x=float(v), i=(-1) ** i * (2**52 + i), label="d0.2 wd0 none")
            for i, v in enumerate(floats)]
    rows[0].update(x=math.nan)
    rows[1].update(x=math.inf)
    rows[2].update(x=-math.inf)
    rows[3].update(x=-0.0)
    path = write_table(tmp_path / "t.csv", rows)
    t = read_table(path)
    assert list(t) == ["model", "x", "i", "label"]
    assert t["x"].dtype == np.float64 and t["i"].dtype == np.float64
    expected = np.array([r["x"] for r in rows])
    assert np.array_equal(t["x"], expected, equal_nan=True)
    assert np.signbit(t["x"][3])
    assert t["i"].tolist() == [r["i"] for r in rows]
    assert t["model"].dtype.kind == "U" and t["model"].tolist() == [r["model"] for r in rows]
    assert set(t["label"].tolist()) == {"d0.2 wd0 none"}


def test_numpy_scalars_none_missing_and_awkward_text(tmp_path):
    rows = [
        dict(a=np.float32(0.1), b=np.int64(7), c=np.bool_(True), s='has, comma "quoted"\nand newline', e=None),
        dict(a=np.float64(2.5), b=3, c=False, s="héllo"),  # e missing
        dict(a=None, b=np.int32(-4), c=True, s="", e=None, late=1.5),
    ]
    t = read_table(write_table(tmp_path / "t.csv", rows))
    assert list(t) == ["a", "b", "c", "s", "e", "late"]
    assert t["a"][0] == float(np.float32(0.1)) and t["a"][1] == 2.5 and math.isnan(t["a"][2])
    assert t["b"].tolist() == [7, 3, -4]
    assert t["c"].tolist() == [1, 0, 1]
    assert t["s"].tolist() == ['has, comma "quoted"\nand newline', "héllo", ""]
    assert np.isnan(t["e"]).all()  # all empty: a float column of NaN
    assert np.isnan(t["late"][:2]).all() and t["late"][2] == 1.5


def test_mixed_column_is_text(tmp_path):
    t = read_table(write_table(tmp_path / "t.csv", [dict(v=1.0), dict(v="none"), dict(v=None)]))
    assert t["v"].tolist() == ["1.0", "none", ""]


def test_column_order_and_determinism(tmp_path):
    rows = [dict(b=1, a=2), dict(c=3, a=4)]
    p1 = write_table(tmp_path / "1.csv", rows, columns=["model", "a"])
    p2 = write_table(tmp_path / "2.csv", rows, columns=["model", "a"])
    assert p1.read_bytes() == p2.read_bytes()
    assert p1.read_text().splitlines()[0] == "model,a,b,c"
    assert p1.read_text() == "model,a,b,c\n,2,1,\n,4,,3\n"


def test_atomic_no_leftovers_and_overwrite(tmp_path):
    path = tmp_path / "sub" / "t.csv"
    write_table(path, [dict(x=1)])
    write_table(path, [dict(y=2.0)])
    assert read_table(path) == {"y": np.array([2.0])}
    assert sorted(p.name for p in path.parent.iterdir()) == [".t.csv.sha256", "t.csv"]  # no temporary left


def test_a_changed_table_fails_on_read_naming_it(tmp_path):
    import hashlib

    from cwnnk.atomic import DamagedArtifact
    from cwnnk.tables import checksum_file

    path = write_table(tmp_path / "t.csv", [dict(model="a", rho=0.4048), dict(model="b", rho=0.1)])
    assert checksum_file(path).read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()
    text = path.read_text()
    path.write_text(text.replace("0.4048", "0.4049"))  # one digit: still a valid table with other numbers
    with pytest.raises(DamagedArtifact, match=rf"{path}: its content is not what was written .*\.t\.csv\.sha256.*"
                                              rf"snakemake --forcerun {path}"):
        read_table(path)
    checksum_file(path).unlink()  # a table without one (written by hand) is read as it is
    assert read_table(path)["rho"].tolist() == [0.4049, 0.1]


def test_empty_and_header_only(tmp_path):
    assert read_table(write_table(tmp_path / "e.csv", [])) == {}
    t = read_table(write_table(tmp_path / "h.csv", [], columns=["model", "x"]))
    assert list(t) == ["model", "x"] and n_rows(t) == 0


def test_where_filter_and_select(tmp_path):
    rows = [dict(model=m, layer=f"conv{i}", v=float(i)) for m in ("a", "b") for i in range(3)]
    path = write_table(tmp_path / "t.csv", rows)
    t = read_table(path, where={"model": "b"})
    assert t["v"].tolist() == [0.0, 1.0, 2.0] and set(t["model"].tolist()) == {"b"}
    assert read_table(path, where={"model": "b", "layer": "conv1"})["v"].tolist() == [1.0]
    assert n_rows(read_table(path, where={"model": "zzz"})) == 0
    with pytest.raises(ValueError, match="no column"):
        read_table(path, where={"nope": 1})
    full = read_table(path)
    assert select(full, full["v"] > 0)["model"].tolist() == ["a", "a", "b", "b"]


def test_ragged_file_is_an_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match="cells"):
        read_table(path)
