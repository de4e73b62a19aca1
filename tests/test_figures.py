"""Figures F1-F7 (cwnnk.figures) on small synthetic tables written in the tables.csv format."""

import numpy as np
import pytest
from matplotlib.image import imread

from cwnnk import figures
from cwnnk.params import FigureParams
from cwnnk.tables import read_table, select, write_table

LAYERS = ("conv1", "conv2", "conv3")


def fake_tables(dropouts=(0.0, 0.3), seeds=(1, 2), layers=LAYERS, channels=6, k=10, rng_seed=0):
    """Plausible overlap, channels, pairwise, solvers and manifolds rows for a small sweep."""
    rng = np.random.default_rng(rng_seed)
    overlap, chans, pairwise, solvers = [], [], [], []
    for dropout in dropouts:
        label = f"d{dropout:g} wd0 none"
        for seed in seeds:
            model = f"convnet_d{dropout:g}_wd0_none_s{seed}"
            test_acc = 0.6 + 0.2 * dropout + 0.05 * rng.random()
            train_acc = min(1.0, test_acc + 0.3 - 0.5 * dropout + 0.02 * rng.random())
            context = dict(model=model, kind="trained", label=label, arch="convnet", dropout=dropout,
                           weight_decay=0.0, augment="none", seed=seed, label_noise=0.2 * (seed - 1))
            for depth, layer in enumerate(layers):
                degree = np.clip(rng.normal(2 + depth + 2 * dropout, 0.7, channels), 0, k)
                rho_hat = 0.2 + 0.1 * depth - 0.2 * dropout + 0.03 * rng.standard_normal()
                row = dict(context, layer=layer, depth=depth, n_layers=len(layers),
                           is_last=int(depth == len(layers) - 1),
                           train_acc=train_acc, test_acc=test_acc, train_loss=1 - train_acc, test_loss=1.2 - test_acc,
                           gap_acc=train_acc - test_acc, gap_loss=0.2 + train_acc - test_acc,
                           n_nodes=60, n_channels=channels, k=k,
                           degree_channel_mean=degree.mean(), degree_agg_mean=degree.mean() + 1.5,
                           rho_hat_mean=rho_hat, rho_hat_chance_mean=0.05 + 0.01 * depth,
                           pairwise_overlap_mean=rho_hat * 0.6, pairwise_overlap_chance_mean=0.03,
                           id_layer=3.0 + depth, loo_error_layer=1 - test_acc + 0.05 * rng.random())
                overlap.append(row)
                for c in range(channels):
                    chans.append(dict(model=model, label=label, dropout=dropout, seed=seed, layer=layer, depth=depth,
                                      channel=c, degree_mean=degree[c], degree_agg_mean=row["degree_agg_mean"],
                                      zero_map_fraction=0.0, id_twonn=2.0 + rng.random()))
                m = rng.random((channels, channels)) * 0.5
                m = (m + m.T) / 2
                np.fill_diagonal(m, 1.0)
                pairwise += [dict(model=model, layer=layer, depth=depth, channel_a=a, channel_b=b, overlap=m[a, b])
                             for a in range(channels) for b in range(channels)]
                for c in [-1, *range(channels)]:
                    exact = degree.mean() + 1.5 if c < 0 else degree[c]
                    solvers.append(dict(model=model, layer=layer, depth=depth, channel=c, degree_exact=exact,
                                        degree_pynnk=exact - 0.3 * rng.random()))
    manifolds = []
    for embedding in ("linear", "curved"):
        for dim in (1, 2, 4, 8):
            for solver in ("exact", "pynnk"):
                mean = 2 * dim ** 0.8 - (0.5 if solver == "pynnk" else 0)
                manifolds.append(dict(embedding=embedding, dim=dim, n=200, D=32, k=k, solver=solver,
                                      degree_mean=mean, degree_std=0.2 * mean, twonn_id=dim * 0.9))
    return dict(overlap=overlap, channels=chans, pairwise=pairwise, solvers=solvers, manifolds=manifolds,
                generalization=[], early_stopping=[], early_stopping_channels=[], pruning=[], claims=[], answer=[])


def write_tables(tmp_path, **kwargs):
    tables_dir = tmp_path / "tables"
    for name, rows in fake_tables(**kwargs).items():
        write_table(tables_dir / f"{name}.csv", rows)
    return tables_dir


@pytest.fixture(autouse=True)
def fast_png(monkeypatch):
    """100 dpi instead of 300 keeps the suite quick; layout and content are the same."""
    monkeypatch.setattr(figures, "DPI", 100)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    tables_dir = write_tables(tmp_path_factory.mktemp("figs"))
    return {name: read_table(tables_dir / f"{name}.csv") for name in figures.TABLES}


def table_paths(tables_dir):
    return {name: tables_dir / f"{name}.csv" for name in figures.TABLES}


def check_outputs(prefix, width=None):
    pdf, png = prefix.with_suffix(".pdf"), prefix.with_suffix(".png")
    assert pdf.stat().st_size > 1000 and pdf.read_bytes().startswith(b"%PDF")
    assert png.stat().st_size > 1000
    image = imread(png)
    h, w = image.shape[:2]
    assert image.ndim == 3 and h > 100 and w > 100
    if width is not None:  # saved at DPI with constrained layout: width is exact
        assert w == pytest.approx(width * figures.DPI, rel=0.02)
    return w / h


def test_f1(tables, tmp_path):
    figures.f1_degree(tables["channels"], tmp_path / "F1", levels=figures.level_order(tables["overlap"]), k=10)
    assert 0.8 < check_outputs(tmp_path / "F1", figures.SINGLE) < 2.5


def test_f2(tables, tmp_path):
    figures.f2_redundancy_depth(tables["overlap"], tmp_path / "F2")
    assert 1.5 < check_outputs(tmp_path / "F2", figures.DOUBLE) < 4


def test_f3_correlations(tables, tmp_path):
    paths, result = figures.f3_generalization(tables["overlap"], tmp_path / "F3")
    assert 0.8 < check_outputs(tmp_path / "F3", figures.DOUBLE) < 2
    assert set(result) == {(y, x) for y, _ in figures.F3_Y for x, _ in figures.F3_X}
    for cor in result.values():  # 4 models, non-constant: both defined
        assert cor["n"] == 4 and cor["pearson"] is not None and cor["spearman"] is not None
        assert "n/a" not in cor["text"] and -1 <= cor["pearson"][0] <= 1


def test_f3_with_nothing_to_correlate_is_one_panel_saying_why(tables, tmp_path, monkeypatch):
    """Two models, or none with test accuracy (an imported model without a test split): no six empty panels, one
    panel with the reason."""
    said = []
    monkeypatch.setattr(figures, "_placeholder", lambda prefix, title, message, **kw: said.append(message) or prefix)
    two = select(tables["overlap"], (tables["overlap"]["seed"] == 1))
    assert figures.f3_generalization(two, tmp_path / "F3")[1] == {}
    none = dict(tables["overlap"], test_acc=np.full(len(tables["overlap"]["model"]), np.nan),
                accuracy_skipped=np.full(len(tables["overlap"]["model"]), "no test split (dataset.test_root is null)"))
    assert figures.f3_generalization(none, tmp_path / "F3")[1] == {}
    assert "a correlation needs 3" in said[0] and "no test split" in said[1]


def test_f0_answers_per_model_and_layer(tables, tmp_path):
    figures.f0_answer(tables["overlap"], tmp_path / "F0")
    check_outputs(tmp_path / "F0", figures.DOUBLE)


def test_layer_positions_keep_architectures_apart():
    """A 4-layer ConvNet and a 2-layer imported model: each keeps its own layers, none shares an index."""
    table = {"model": np.array(["a"] * 4 + ["b"] * 2 + ["c"] * 4),
             "layer": np.array(["conv1", "conv2", "conv3", "conv4", "layer4.0.relu", "layer4.1.relu",
                                "conv1", "conv2", "conv3", "conv4"]),
             "depth": np.array([0, 1, 2, 3, 0, 1, 0, 1, 2, 3], dtype=float)}
    positions = figures.layer_positions(table)
    assert positions == {"conv1": 0, "conv2": 1, "conv3": 2, "conv4": 3, "layer4.0.relu": 4, "layer4.1.relu": 5}
    assert figures._with_positions(table, positions)["depth"].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]


def test_channel_order_groups_redundant_channels():
    """Channels 0, 2, 4 share their neighbourhoods, as do 1, 3: the clustered order puts each group together;
    a dead channel goes last."""
    groups = np.array([0, 1, 0, 1, 0, 2])
    matrix = np.where(groups[:, None] == groups[None, :], 0.8, 0.05)
    np.fill_diagonal(matrix, 1.0)
    dead = np.array([False] * 5 + [True])
    order = figures.channel_order(matrix, dead)
    assert order[-1] == 5 and sorted(order[:5]) == [0, 1, 2, 3, 4]
    runs = groups[order[:5]]
    assert (np.diff(runs) != 0).sum() == 1  # one boundary: the two groups are contiguous


def test_f3_constant_prints_na(tables, tmp_path):
    flat = dict(tables["overlap"], test_acc=np.full_like(tables["overlap"]["test_acc"], 0.7))
    _, result = figures.f3_generalization(flat, tmp_path / "F3")
    assert result[("rho_hat_mean", "test_acc")]["text"].count("n/a") == 2
    assert "n/a" not in result[("rho_hat_mean", "gap_acc")]["text"]


def test_f3_colours_by_label_noise_and_marks_by_dropout(tmp_path, monkeypatch):
    """Every drawn point of F3: one colour per label-noise level, one marker per dropout rate,
    hollow exactly for the saved epochs. The expected grouping comes from the hand-built table."""
    from matplotlib.colors import to_hex

    # 6 models at their last layer: label noise 0 / 0.2 / 0.4 x dropout 0 / 0.5, the last one a
    # saved epoch; test accuracy 0.50 ... 0.75 tells the points apart.
    noise = [0.0, 0.2, 0.4, 0.0, 0.2, 0.4]
    dropout = [0.0, 0.0, 0.0, 0.5, 0.5, 0.5]
    kind = ["trained"] * 5 + ["snapshot"]
    test_acc = [0.50, 0.55, 0.60, 0.65, 0.70, 0.75]
    table = {"model": np.array([f"m{i}" for i in range(6)]), "kind": np.array(kind),
             "label": np.array([f"d{d:g} wd0 none" + (f" ln{n:g}" if n else "") for n, d in zip(noise, dropout)]),
             "is_last": np.ones(6), "label_noise": np.array(noise), "dropout": np.array(dropout),
             "test_acc": np.array(test_acc), "gap_acc": np.array([0.3, 0.2, 0.25, 0.1, 0.05, 0.15]),
             "rho_hat_mean": np.array([0.6, 0.5, 0.7, 0.4, 0.65, 0.55]),
             "pairwise_overlap_mean": np.array([0.2, 0.3, 0.25, 0.1, 0.15, 0.35]),
             "loo_error_layer": np.array([0.1, 0.3, 0.5, 0.12, 0.28, 0.45])}
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, prefix: drawn.append(fig) or [])
    figures.f3_generalization(table, tmp_path / "F3")
    (fig,) = drawn
    axes = [ax for ax in fig.axes if ax.collections]
    assert len(axes) == 6  # 3 measures x (test accuracy, gap)
    for ax in axes[::2]:  # the test-accuracy column: x is 100 x test_acc
        points = {}  # model index -> (colour, marker vertices, hollow)
        for coll in ax.collections:
            faces, edges = coll.get_facecolors(), coll.get_edgecolors()
            marker = tuple(np.round(coll.get_paths()[0].vertices, 6).ravel())
            for j, (x, _) in enumerate(coll.get_offsets()):
                i = test_acc.index(round(float(x) / 100, 2))
                face = faces[j % len(faces)] if len(faces) else None
                hollow = face is None or face[3] == 0
                colour = to_hex(edges[j % len(edges)] if hollow else face)
                points[i] = (colour, marker, hollow)
        assert sorted(points) == list(range(6))  # every model drawn once
        for i in range(6):
            for j in range(6):
                assert (points[i][0] == points[j][0]) == (noise[i] == noise[j]), (i, j)
                assert (points[i][1] == points[j][1]) == (dropout[i] == dropout[j]), (i, j)
            assert points[i][2] == (kind[i] == "snapshot")
    handles = fig.legends[0].legend_handles
    labels = [h.get_label() for h in handles]
    assert labels[:5] == ["label noise 0", "label noise 0.2", "label noise 0.4", "dropout 0", "dropout 0.5"]
    assert "saved epoch" in labels


def test_correlation_values():
    x = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    c = figures.correlation(x, 2 * x + 1)
    assert c["n"] == 4 and c["pearson"][0] == pytest.approx(1) and c["spearman"][0] == pytest.approx(1)


def test_f4(tables, tmp_path):
    models = figures._first_seen(tables["pairwise"]["model"])
    figures.f4_heatmaps(tables["pairwise"], tmp_path / "F4", model=models[-1])
    check_outputs(tmp_path / "F4", figures.DOUBLE)
    with pytest.raises(ValueError, match="heatmap_model"):
        figures.f4_heatmaps(tables["pairwise"], tmp_path / "F4", model="nope")


def test_f5(tables, tmp_path):
    figures.f5_manifolds(tables["manifolds"], tmp_path / "F5")
    assert 1.5 < check_outputs(tmp_path / "F5", figures.DOUBLE) < 4


def test_f6(tables, tmp_path):
    figures.f6_solvers(tables["solvers"], tmp_path / "F6")
    assert 0.8 < check_outputs(tmp_path / "F6", figures.SINGLE) < 2.5


def epoch_table():
    """overlap.csv's last-layer rows of two runs, each saved at epoch 5 and final at epoch 15,
    one run without saved epochs and an external model; and early_stopping.csv of the two."""
    rows = []
    for run, label, dropout, seed, values in (
            ("r-d0-s1", "d0 wd0 none", 0.0, 1, {5: (0.70, 0.20, 0.50), 15: (0.90, 0.10, 0.60)}),
            ("r-d0.5-s1", "d0.5 wd0 none", 0.5, 1, {5: (0.80, 0.05, 0.40), 15: (0.85, 0.15, 0.45)}),
            ("r-d0-s2", "d0 wd0 none", 0.0, 2, {15: (0.88, 0.12, 0.55)})):
        for epoch, (test_acc, loo, rho) in values.items():
            model = run if epoch == 15 else f"{run}-e{epoch}"
            for depth in (0, 1):  # only is_last == 1 is drawn
                rows.append(dict(model=model, kind="trained" if epoch == 15 else "snapshot", label=label, run=run,
                                 epoch=epoch, epochs=15, seed=seed, dropout=dropout, weight_decay=0.0,
                                 augment="none", depth=depth, is_last=depth, test_acc=test_acc - 0.3 * (1 - depth),
                                 loo_error_layer=loo + 0.5 * (1 - depth), rho_hat_mean=rho))
    rows.append(dict(model="ext", kind="external", label="ext", run="ext", epoch=np.nan, epochs=np.nan, seed=np.nan,
                     dropout=np.nan, weight_decay=np.nan, augment="", depth=0, is_last=1, test_acc=0.5,
                     loo_error_layer=0.5, rho_hat_mean=0.5))
    early = [dict(run="r-d0-s1", loo_epoch=15.0, best_test_epoch=15.0),
             dict(run="r-d0.5-s1", loo_epoch=5.0, best_test_epoch=15.0)]
    return rows, early


def test_f7_series_per_run(tmp_path):
    rows, early = epoch_table()
    write_table(tmp_path / "overlap.csv", rows)
    write_table(tmp_path / "early_stopping.csv", early)
    overlap, early = read_table(tmp_path / "overlap.csv"), read_table(tmp_path / "early_stopping.csv")
    paths, runs = figures.f7_epochs(overlap, tmp_path / "F7", early_stopping=early,
                                    levels=figures.level_order(overlap))
    assert 1.2 < check_outputs(tmp_path / "F7", figures.DOUBLE) < 3.5
    assert list(runs) == ["r-d0-s1", "r-d0.5-s1"]  # not the run without saved epochs, not the external model
    a, b = runs["r-d0-s1"], runs["r-d0.5-s1"]
    assert a["epoch"].tolist() == [5, 15] and b["epoch"].tolist() == [5, 15]
    np.testing.assert_allclose(a["test_error"], [0.30, 0.10])
    np.testing.assert_allclose(b["loo_error"], [0.05, 0.15])
    np.testing.assert_allclose(b["rho_hat"], [0.40, 0.45])
    assert (a["label"], b["label"]) == ("d0 wd0 none", "d0.5 wd0 none")
    assert (b["loo_epoch"], b["best_test_epoch"]) == (5.0, 15.0)
    # Without early_stopping.csv the picks are worked out from the same rows (cwnnk.generalization).
    assert {n: (r["loo_epoch"], r["best_test_epoch"]) for n, r in figures.f7_data(overlap).items()} == \
        {"r-d0-s1": (15.0, 15.0), "r-d0.5-s1": (5.0, 15.0)}


def test_f7_marks_the_epoch_the_validation_split_picks(tmp_path):
    rows, early = epoch_table()
    val = {("r-d0-s1", 5): 0.75, ("r-d0-s1", 15): 0.70, ("r-d0.5-s1", 5): 0.60, ("r-d0.5-s1", 15): 0.80,
           ("r-d0-s2", 15): 0.8}
    with_val = [dict(row, val_acc=val.get((row["run"], row["epoch"]))) for row in rows]
    overlap = read_table_rows(tmp_path, with_val)
    # Worked out from the rows (patience 1): validation error 0.25 then 0.30 picks 5; 0.40 then 0.20 picks 15.
    runs = figures.f7_data(overlap)
    assert {n: r["val_epoch"] for n, r in runs.items()} == {"r-d0-s1": 5.0, "r-d0.5-s1": 15.0}
    # early_stopping.csv's val_epoch wins where it has one; without a validation split it is None.
    early = read_table_rows(tmp_path, [dict(e, val_epoch=15.0 if e["run"] == "r-d0-s1" else None) for e in early])
    assert figures.f7_data(overlap, early)["r-d0-s1"]["val_epoch"] == 15.0
    assert figures.f7_data(overlap, early)["r-d0.5-s1"]["val_epoch"] == 15.0
    assert {r["val_epoch"] for r in figures.f7_data(read_table_rows(tmp_path, rows)).values()} == {None}
    figures.f7_epochs(overlap, tmp_path / "F7v", levels=figures.level_order(overlap))
    figures.f7_epochs(read_table_rows(tmp_path, rows), tmp_path / "F7n", levels=figures.level_order(overlap))
    assert 1.2 < check_outputs(tmp_path / "F7v", figures.DOUBLE) < 3.5
    assert (tmp_path / "F7v.png").read_bytes() != (tmp_path / "F7n.png").read_bytes()  # the squares are drawn


def test_f7_placeholder_without_saved_epochs(tmp_path):
    rows, _ = epoch_table()
    overlap = read_table_rows(tmp_path, [r for r in rows if r["kind"] != "snapshot"])  # final models only
    paths, runs = figures.f7_epochs(overlap, tmp_path / "F7")
    assert runs == {} and all(p.stat().st_size > 0 for p in paths)
    assert figures.f7_epochs({}, tmp_path / "F7e")[1] == {}


def read_table_rows(tmp_path, rows):
    write_table(tmp_path / "rows.csv", rows)
    return read_table(tmp_path / "rows.csv")


def test_single_model_single_layer(tmp_path):
    """One level, one seed, one layer, two channels: every figure draws what is there."""
    tables_dir = write_tables(tmp_path, dropouts=(0.1,), seeds=(3,), layers=("conv1",), channels=2)
    paths = figures.draw_all(table_paths(tables_dir), figures.figure_paths(tmp_path / "figs"))
    assert paths == figures.figure_paths(tmp_path / "figs")
    for name in figures.FIGURES:
        check_outputs(tmp_path / "figs" / name)


def test_draw_all_missing_and_empty_tables(tmp_path):
    """Absent or empty tables give placeholder figures (the rule's outputs always exist)."""
    tables_dir = tmp_path / "tables"
    write_table(tables_dir / "overlap.csv", [])
    write_table(tables_dir / "channels.csv", [], columns=["model", "label", "depth"])
    for path in figures.draw_all(table_paths(tables_dir), figures.figure_paths(tmp_path / "figs")):
        assert path.stat().st_size > 0


def test_deterministic(tables, tmp_path):
    """The same tables give byte-identical PDF and PNG files (no dates, fixed jitter)."""
    out = []
    for run in ("a", "b"):
        figures.f1_degree(tables["channels"], tmp_path / f"F1{run}")
        figures.f4_heatmaps(tables["pairwise"], tmp_path / f"F4{run}")
        out.append([(tmp_path / f"F{n}{run}.{ext}").read_bytes() for n in (1, 4) for ext in ("pdf", "png")])
    assert out[0] == out[1]
    assert b"CreationDate" not in out[0][0]


def test_level_order_and_styles():
    table = {"label": np.array(["ext", "d0.5 wd0 none", "d0 wd0.001 none", "d0 wd0 none"]),
             "kind": np.array(["external", "trained", "trained", "trained"]),
             "dropout": np.array([0.0, 0.5, 0.0, 0.0]), "weight_decay": np.array([np.nan, 0, 0.001, 0])}
    assert figures.level_order(table) == ["d0 wd0 none", "d0 wd0.001 none", "d0.5 wd0 none", "ext"]
    styles = figures.level_styles(figures.level_order(table))
    assert len({c for c, _ in styles.values()}) == 4
    assert all(c in figures.OKABE_ITO.values() for c, _ in styles.values())


def test_draw_all_unknown_model(tmp_path):
    tables_dir = write_tables(tmp_path, dropouts=(0.0,), seeds=(1,), layers=("conv1",), channels=2)
    outputs = figures.figure_paths(tmp_path / "figs")
    with pytest.raises(ValueError, match="heatmap_model='nope'.*models there"):
        figures.draw_all(table_paths(tables_dir), outputs, FigureParams(heatmap_model="nope"))
    with pytest.raises(ValueError, match="solver_model='nope'"):
        figures.draw_all(table_paths(tables_dir), outputs, FigureParams(solver_model="nope"))
    assert not (tmp_path / "figs").exists()  # checked before anything is drawn
    with pytest.raises(ValueError, match="no output path given for"):
        figures.draw_all(table_paths(tables_dir), outputs[:-1])


def test_dead_channels_from_store_to_tables_and_figures(tmp_path):
    """A layer with two dead channels (all-zero maps on every image), through the graphs,
    overlap and tables stages: counted in the tables, left out of F1's boxes and F4's mean."""
    import json

    from cwnnk.activations import StoreWriter
    from cwnnk.graphs import build_layer_graphs
    from cwnnk.overlap import analyse_layer
    from cwnnk.params import GraphParams
    from cwnnk.tables import collect_tables

    rng = np.random.default_rng(0)
    n, shape = 40, (5, 4, 4)
    values = np.maximum(rng.normal(size=(n, *shape)), 0).astype(np.float32)
    values[:, [1, 3]] = 0  # dead: zero on every image
    values[:39, 4] = 0  # nearly dead, but alive on one image
    store = tmp_path / "m.zarr"
    writer = StoreWriter(store, {"model": "m"}, "none")
    writer.add_split("train", rng.integers(0, 2, n), np.arange(n), {"relu": shape}, chunk_samples=8)
    for start in range(0, n, 8):
        writer.write("train", "relu", start, values[start : start + 8])
    writer.finish()
    build_layer_graphs(store, "relu", tmp_path / "graphs", GraphParams(k=6, device="cpu"), log=lambda m: None)
    analyse_layer(tmp_path / "graphs", tmp_path / "relu.json")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"final": dict(train_acc=0.9, test_acc=0.8)}))
    entry = dict(name="m", kind="trained", spec={"arch": "convnet"}, dropout=0.0, weight_decay=0.0, augment="none",
                 seed=1, label="d0 wd0 none")
    out = {name: tmp_path / f"{name}.csv" for name in ("overlap", "channels", "pairwise")}
    collect_tables({"m": entry}, {"m": metrics}, {"m": ["relu"]}, {"m": [tmp_path / "relu.json"]}, out)

    overlap, channels, pairwise = (read_table(out[name]) for name in ("overlap", "channels", "pairwise"))
    assert overlap["n_dead_channels"].tolist() == [2] and overlap["n_channels"].tolist() == [5]
    assert channels["dead"].tolist() == [0, 1, 0, 1, 0]
    assert channels["degree_mean"][[1, 3]].tolist() == [0, 0]
    live = channels["degree_mean"][[0, 2, 4]]
    assert overlap["degree_channel_mean"][0] == pytest.approx(live.mean())  # the live channels only
    cells = figures.f1_data(channels, ["d0 wd0 none"])
    assert cells["d0 wd0 none", 0]["dead"] == 2
    assert sorted(cells["d0 wd0 none", 0]["live"]) == sorted(live)
    [panel] = figures.f4_data(pairwise, "m", channels)
    assert panel["dead"].tolist() == [False, True, False, True, False] and panel["n_live_pairs"] == 3
    assert panel["mean"] == pytest.approx(overlap["pairwise_overlap_mean"][0])
    # Older tables without the dead column: zero_map_fraction == 1 identifies the same channels.
    old = {name: column for name, column in channels.items() if name != "dead"}
    assert figures.dead_channels(old).tolist() == [False, True, False, True, False]
    figures.f1_degree(channels, tmp_path / "F1")
    figures.f4_heatmaps(pairwise, tmp_path / "F4", channels=channels)
    check_outputs(tmp_path / "F1")
    check_outputs(tmp_path / "F4")


def test_level_names_decode_the_labels(tables):
    levels = figures.level_order(tables["overlap"])
    names, common = figures.level_names(tables["overlap"], levels)
    assert names == {"d0 wd0 none": "dropout 0", "d0.3 wd0 none": "dropout 0.3"}
    assert common == "weight decay 0, no augmentation"
    # channels.csv lacks weight_decay and augment: the label itself is decoded.
    assert figures.level_names(tables["channels"], levels) == (names, common)
    table = {"label": np.array(["d0 wd0.001 shift", "d0 wd0 shift_flip", "mine"]),
             "kind": np.array(["trained", "trained", "external"])}
    names, common = figures.level_names(table, list(table["label"]))
    assert names == {"d0 wd0.001 shift": "weight decay 0.001, shift augmentation",
                     "d0 wd0 shift_flip": "weight decay 0, shift + flip augmentation",
                     "mine": "mine (imported)"}
    assert common == "dropout 0"
    single = figures.level_names({"label": np.array(["d0.2 wd0 none"])}, ["d0.2 wd0 none"])
    assert single == ({"d0.2 wd0 none": "dropout 0.2, weight decay 0, no augmentation"}, "")


def test_legends_decode_the_sweep_factors_from_labels():
    """Labels name label noise, training-set size and width only where used; the others read at their default."""
    table = {"label": np.array(["d0 wd0 none", "d0 wd0 none ln0.4 n400", "d0.5 wd0 none w0.5"]),
             "kind": np.array(["trained"] * 3)}
    names, common = figures.level_names(table, list(table["label"]))
    assert names["d0 wd0 none"] == "dropout 0, label noise 0, all training images, width x1"
    assert names["d0 wd0 none ln0.4 n400"] == "dropout 0, label noise 0.4, 400 training images, width x1"
    assert names["d0.5 wd0 none w0.5"] == "dropout 0.5, label noise 0, all training images, width x0.5"
    assert common == "weight decay 0, no augmentation"
