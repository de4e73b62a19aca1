"""The activation store format (cwnnk.activations): writer, reader and what the reader refuses.

These tests build stores from numpy arrays directly (no model), so they are fast and check
the format on its own; tests/test_extract.py checks stores made from real models.
"""

import json
import multiprocessing
import shutil

import numpy as np
import pytest
import zarr

from cwnnk.activations import FORMAT, StoreError, StoreWriter, dimension_names, open_activations

SHAPES = {"conv1": (3, 5, 5), "conv2": (4, 2, 2)}
N, B = 23, 8  # a partial last chunk on purpose


def _data(seed=0):
    rng = np.random.default_rng(seed)
    layers = {name: rng.random((N, *shape), dtype=np.float32) for name, shape in SHAPES.items()}
    layers["conv1"][:, 1] = 0.0  # a dead channel: its all-zero chunks must still be written
    return layers, rng.integers(0, 3, N), np.arange(N) * 7


def _write(path, layers, labels, indices, compressor="zstd", splits=("train",), finish=True):
    writer = StoreWriter(path, {"model": "m"}, compressor)
    for s in splits:
        writer.add_split(s, labels, indices, SHAPES, B)
    for s in splits:
        for start in range(0, N, B):
            for name, values in layers.items():
                writer.write(s, name, start, values[start : start + B])
    if finish:
        writer.finish()
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    layers, labels, indices = _data()
    path = _write(tmp_path_factory.mktemp("store") / "m.zarr", layers, labels, indices, splits=("train", "test"))
    return path, layers, labels, indices


def _copy(store, tmp_path):
    return shutil.copytree(store[0], tmp_path / "copy.zarr")


@pytest.mark.parametrize("compressor", ["none", "zstd"])
def test_round_trip(tmp_path, compressor):
    layers, labels, indices = _data(1)
    path = _write(tmp_path / "m.zarr", layers, labels, indices, compressor)
    acts = open_activations(path)
    assert acts.layers == list(SHAPES) and len(acts) == N and acts.splits == ("train",)
    assert acts.shapes == {name: (N, *shape) for name, shape in SHAPES.items()}
    np.testing.assert_array_equal(acts.labels, labels)
    np.testing.assert_array_equal(acts.indices, indices)
    for name, values in layers.items():
        c, h, w = SHAPES[name]
        for ch in range(c):
            got = acts.channel(name, ch)
            assert got.dtype == np.float32 and got.shape == (N, h * w)
            np.testing.assert_array_equal(got, values[:, ch].reshape(N, -1))
        agg = acts.aggregate(name)
        assert agg.shape == (N, c * h * w)
        np.testing.assert_array_equal(agg, values.reshape(N, -1))
        # channel c is the block of columns c*H*W .. (c+1)*H*W of the aggregate
        np.testing.assert_array_equal(agg[:, h * w : 2 * h * w], acts.channel(name, 1))
    assert acts.attrs["complete"] is True and acts.attrs["model"] == "m"


def test_layout_chunks_one_channel_per_chunk(store):
    root = zarr.open_group(str(store[0]), mode="r")
    assert root.metadata.zarr_format == 3
    for name, (c, h, w) in SHAPES.items():
        arr = root["train"][name]
        assert arr.dtype == np.float32 and arr.shape == (N, c, h, w)
        assert tuple(arr.metadata.dimension_names) == dimension_names(name) == ("sample", f"{name}_channel",
                                                                                f"{name}_y", f"{name}_x")
        assert arr.chunks == (B, 1, h, w) and arr.attrs["coordinates"] == "labels indices"
    for name in ("sample", "labels", "indices"):
        assert tuple(root["train"][name].metadata.dimension_names) == ("sample",)
    np.testing.assert_array_equal(root["train"]["sample"][:], np.arange(N))
    consolidated = json.loads((store[0] / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert {"train/conv1", "test/conv2", "train/labels", "train/sample"} <= set(consolidated)
    assert sorted(p.name for p in store[0].iterdir()) == ["test", "train", "zarr.json"]  # nothing foreign


@pytest.mark.filterwarnings("error")  # neither zarr nor xarray may warn, on writing or on opening
def test_xarray_opens_a_store_as_it_is(tmp_path):
    xr = pytest.importorskip("xarray")
    layers, labels, indices = _data(2)
    path = _write(tmp_path / "m.zarr", layers, labels, indices, splits=("train", "test"))
    acts = open_activations(path)
    tree = xr.open_datatree(path, engine="zarr")
    assert set(tree.children) == {"train", "test"} and tree.attrs["complete"] is True
    for ds in (tree["train"].to_dataset(), xr.open_zarr(path, group="train"),
               xr.open_dataset(path, group="train", engine="zarr")):
        assert set(ds.data_vars) == set(SHAPES) and set(ds.coords) == {"sample", "labels", "indices"}
        for name in SHAPES:  # conv1 is 5x5, conv2 2x2: each has dimensions of its own
            layer = ds[name]
            assert layer.dims == dimension_names(name) and layer.dtype == np.float32
            assert layer.attrs == {"layer": name}
            np.testing.assert_array_equal(layer.values, acts.samples(name))
            np.testing.assert_array_equal(layer.isel({f"{name}_channel": 1}).values.reshape(N, -1),
                                          acts.channel(name, 1))
        np.testing.assert_array_equal(ds["labels"].values, acts.labels)
        np.testing.assert_array_equal(ds["indices"].values, acts.indices)
        np.testing.assert_array_equal(ds["sample"].values, np.arange(N))
        assert ds["labels"].dtype == ds["indices"].dtype == np.int64 and ds["labels"].dims == ("sample",)
        # the coordinates travel with a layer, e.g. the class-1 samples of conv2
        np.testing.assert_array_equal(ds["conv2"].where(ds["labels"] == 1, drop=True)["indices"].values,
                                      indices[labels == 1])


def test_reading_a_channel_touches_only_its_chunks(store, tmp_path):
    path = _copy(store, tmp_path)
    acts = open_activations(path)
    for f in (path / "train" / "conv1").glob("c.*.2.0.0"):  # every chunk of channel 2
        f.unlink()
    np.testing.assert_array_equal(acts.channel("conv1", 0), store[1]["conv1"][:, 0].reshape(N, -1))
    assert np.isnan(acts.channel("conv1", 2)).all()  # what a reader without the check would get


def test_test_split_is_a_second_group(store):
    acts = open_activations(store[0], split="test")
    assert acts.split == "test" and len(acts) == N
    with pytest.raises(StoreError, match="no 'valid' split"):
        open_activations(store[0], split="valid")


def test_missing_store_is_refused(tmp_path):
    with pytest.raises(StoreError, match="no activation store here"):
        open_activations(tmp_path / "nothing.zarr")


def test_store_without_complete_is_refused(tmp_path):
    layers, labels, indices = _data()
    path = _write(tmp_path / "m.zarr", layers, labels, indices, finish=False)
    with pytest.raises(StoreError, match=r"m\.zarr.*incomplete.*'complete' attribute is missing"):
        open_activations(path)


def test_store_with_a_deleted_chunk_is_refused(store, tmp_path):
    path = _copy(store, tmp_path)
    (path / "test" / "conv2" / "c.1.3.0.0").unlink()
    with pytest.raises(StoreError, match=r"copy\.zarr: damaged.*test/conv2 lacks 1 of 12 chunks "
                                         r"\(e\.g\. test/conv2/c\.1\.3\.0\.0\)"):
        open_activations(path)


def test_store_with_a_deleted_array_is_refused(store, tmp_path):
    path = _copy(store, tmp_path)
    shutil.rmtree(path / "train" / "labels")
    with pytest.raises(StoreError, match="array train/labels is missing"):
        open_activations(path)


@pytest.mark.parametrize("old", [1, 99])  # 1: the layout before stores opened in xarray (shared y, x)
def test_other_format_is_refused_with_rerun_extract(store, tmp_path, old):
    path = _copy(store, tmp_path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["format"] = old
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=rf"copy\.zarr/zarr\.json: activation store format {old}, this reader "
                                         rf"reads format {FORMAT} only .*rerun the extract stage"):
        open_activations(path)


def test_store_without_consolidated_metadata_is_refused(store, tmp_path):
    path = _copy(store, tmp_path)
    meta = json.loads((path / "zarr.json").read_text())
    del meta["consolidated_metadata"]
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="damaged.*no consolidated metadata"):
        open_activations(path)


def test_writer_refuses_misaligned_or_short_writes(tmp_path):
    layers, labels, indices = _data()
    writer = StoreWriter(tmp_path / "m.zarr", {})
    writer.add_split("train", labels, indices, SHAPES, B)
    with pytest.raises(ValueError, match="chunk-aligned"):
        writer.write("train", "conv1", 3, layers["conv1"][3:11])
    writer.write("train", "conv1", 0, layers["conv1"][:B])
    with pytest.raises(ValueError, match="not every array was filled.*train/conv1 \\(8/23 rows\\)"):
        writer.finish()
    assert "complete" not in zarr.open_group(str(tmp_path / "m.zarr"), mode="r").attrs


def test_writer_refuses_a_layer_named_like_a_dimension(tmp_path):
    _, labels, indices = _data()
    writer = StoreWriter(tmp_path / "m.zarr", {})
    with pytest.raises(ValueError, match=r"\['conv1_x'\] equal a dimension name"):
        writer.add_split("train", labels, indices, {"conv1": (1, 2, 2), "conv1_x": (1, 2, 2)}, B)


def _read_in_child(args):
    path, layer, c = args
    acts = open_activations(path)  # each process opens and verifies on its own
    return layer, c, acts.channel(layer, c)


def test_several_processes_read_one_store(store):
    jobs = [(str(store[0]), name, c) for name, (channels, _, _) in SHAPES.items() for c in range(channels)]
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_read_in_child, jobs)
    for layer, c, got in results:
        np.testing.assert_array_equal(got, store[1][layer][:, c].reshape(N, -1))
