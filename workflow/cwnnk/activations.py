"""Activation stores: the on-disk format between the extract stage and the graph stage.

One Zarr (format 3) group per model, `results/activations/{model}.zarr`:

    zarr.json                    root attributes: provenance (see docs/activations.md),
                                 the consolidated metadata of every group and array, and
                                 `complete: true` written last
    train/                       one group per stored split ("train", optionally "test")
        sample    (N,)  int64    0 .. N-1, the sample's position in the store (index coordinate)
        labels    (N,)  int64    class label of each stored sample (coordinate on `sample`)
        indices   (N,)  int64    position of each sample in the source split (Split.indices)
        <layer>   (N, C, H, W) float32, dimension names (sample, <layer>_channel, <layer>_y,
                  <layer>_x), attribute `coordinates: "labels indices"`, chunks (B, 1, H, W)
                  with B the extraction batch size, so one channel of every sample lives in
                  its own ceil(N / B) chunks

Every layer has dimension names of its own, so layers of different sizes share a group, and
`xarray.open_datatree(path, engine="zarr")` or `xarray.open_zarr(path, group="train")`
open a store as it is (labels and indices as coordinates, no warnings).

This module needs only numpy and zarr (no torch): the writer is driven by
`cwnnk.extract`, and the reader (`open_activations`) refuses anything that is not a
complete store, so a killed or damaged extraction is never analysed.
"""

import itertools
import json
import os
import warnings
from pathlib import Path

import numpy as np
import zarr

# 2: per-layer dimension names, coordinates and consolidated metadata (xarray opens it); 1: shared (y, x).
FORMAT = 2
SAMPLE = "sample"
COORDINATES = ("labels", "indices")  # non-index coordinates along `sample`, named by every layer
COMPRESSORS = ("none", "zstd")
SPLITS = ("train", "test")
_RESERVED = (SAMPLE, *COORDINATES)
# Flat chunk keys ("c.3.7.0.0") keep one directory per array: fewer inodes, one cheap listing.
_CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}


class StoreError(ValueError):
    """A path that is not a complete, intact activation store."""


def dimension_names(layer):
    """The dimension names of a layer's (N, C, H, W) array: `sample` is shared, the rest its own."""
    return (SAMPLE, f"{layer}_channel", f"{layer}_y", f"{layer}_x")


def compressors(name):
    """Zarr's bytes-to-bytes codecs for an `extract.compressor` value, each ending in a CRC32C checksum of the
    chunk, which zarr checks on every read: a flipped bit fails there instead of reading back as another value.

    none: raw float32. zstd: Blosc-zstd, level 1, no shuffle. Chosen by measurement
    (docs/activations.md): post-ReLU maps are mostly exact zeros, and those runs of zero
    bytes compress better unshuffled; level 5 gains under 5% in size at 6x the encode time.
    """
    from zarr.codecs import BloscCodec, Crc32cCodec

    if name == "none":
        return (Crc32cCodec(),)
    if name == "zstd":
        return (BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle"), Crc32cCodec())
    raise ValueError(f"extract.compressor must be one of {COMPRESSORS}, got {name!r}")


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


class StoreWriter:
    """Create an activation store at `path` and fill it batch by batch.

    Writes must be chunk-aligned and in order for each array (start = rows written so far,
    a multiple of the chunk's sample extent), so memory never holds more than one batch.
    `finish()` checks that every array is full, consolidates the metadata into the root
    zarr.json and only then writes `complete: true` there.
    The caller makes the whole thing atomic (write to a temporary sibling, then rename).
    """

    def __init__(self, path, attrs, compressor="zstd"):
        self.path = Path(path)
        attrs = _jsonable(attrs)
        if {"complete", "layers", "shapes", "splits"} & set(attrs):
            raise ValueError("'complete', 'layers', 'shapes' and 'splits' are written by StoreWriter itself")
        self.group = zarr.open_group(str(self.path), mode="w-", zarr_format=3, attributes=dict(attrs, format=FORMAT))
        self.compressor = compressor
        self._compressors = compressors(compressor)
        self._arrays = {}  # (split, layer) -> zarr.Array
        self._rows = {}  # (split, layer) -> rows written

    def add_split(self, split, labels, indices, shapes, chunk_samples, info=None):
        """Create the group of one split: labels, indices and an empty (N, C, H, W) array per layer.

        shapes: {layer: (C, H, W)} in depth order, the same for every split; chunk_samples:
        the batch size B; info: extra JSON-able facts about the split (stored in attrs.splits).
        The root attributes `layers`, `shapes` and `splits` are kept up to date here.
        """
        shapes = {layer: [int(s) for s in shape] for layer, shape in shapes.items()}
        known = self.group.attrs.get("shapes")
        if known is not None and known != shapes:
            raise ValueError(f"split {split!r}: layers {shapes} differ from the other splits' {known}")
        labels = np.asarray(labels, dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        if labels.shape != indices.shape or labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels {labels.shape} and indices {indices.shape} must be equal non-empty 1-d arrays")
        n = len(labels)
        chunk_samples = int(min(chunk_samples, n))
        clash = sorted(set(shapes) & {dim for layer in shapes for dim in dimension_names(layer)})
        if clash:
            raise ValueError(f"layer name(s) {clash} equal a dimension name of another layer")
        group = self.group.create_group(split)
        coordinates = ((SAMPLE, np.arange(n, dtype=np.int64)), ("labels", labels), ("indices", indices))
        for name, values in coordinates:
            arr = group.create_array(name, shape=(n,), dtype="int64", chunks=(n,), dimension_names=(SAMPLE,),
                                     chunk_key_encoding=_CHUNK_KEY_ENCODING, compressors=self._compressors,
                                     config={"write_empty_chunks": True})
            arr[:] = values
        for layer, shape in shapes.items():
            if layer in _RESERVED:
                raise ValueError(f"layer name {layer!r} is reserved")
            c, h, w = (int(s) for s in shape)
            self._arrays[split, layer] = group.create_array(
                layer, shape=(n, c, h, w), dtype="float32", chunks=(chunk_samples, 1, h, w),
                dimension_names=dimension_names(layer), chunk_key_encoding=_CHUNK_KEY_ENCODING,
                compressors=self._compressors, fill_value=float("nan"),
                # A dead channel's all-zero chunk must still be written: the reader checks every key.
                config={"write_empty_chunks": True},
                # xarray's convention (CF): the names of the variable's non-index coordinates.
                attributes={"layer": layer, "coordinates": " ".join(COORDINATES)},
            )
            self._rows[split, layer] = 0
        splits = dict(self.group.attrs.get("splits", {}))
        splits[split] = _jsonable(dict(info or {}, n=n, chunk_samples=chunk_samples))
        self.group.attrs.update({"layers": list(shapes), "shapes": shapes, "splits": splits})

    def write(self, split, layer, start, values):
        """Write rows start .. start + len(values) of one layer (values: (b, C, H, W) float32)."""
        arr = self._arrays[split, layer]
        values = np.asarray(values, dtype=np.float32)
        if start != self._rows[split, layer] or start % arr.chunks[0]:
            raise ValueError(f"{split}/{layer}: writes must be in order and chunk-aligned "
                             f"(next row {self._rows[split, layer]}, chunk {arr.chunks[0]}), got start {start}")
        if values.shape[1:] != arr.shape[1:] or start + len(values) > arr.shape[0]:
            raise ValueError(f"{split}/{layer}: block {values.shape} at row {start} does not fit {arr.shape}")
        arr[start : start + len(values)] = values
        self._rows[split, layer] = start + len(values)

    def finish(self):
        """Check every array is full, consolidate the metadata, then mark the store complete
        (the last write, into the root zarr.json that also holds the consolidated metadata)."""
        short = [f"{s}/{layer} ({rows}/{self._arrays[s, layer].shape[0]} rows)"
                 for (s, layer), rows in self._rows.items() if rows != self._arrays[s, layer].shape[0]]
        if short:
            raise ValueError(f"{self.path}: not every array was filled: {', '.join(short)}")
        with warnings.catch_warnings():
            # zarr: consolidated metadata is not (yet) in the format 3 spec; xarray and zarr read it.
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
            zarr.consolidate_metadata(str(self.path))
        # Reopened so that the attribute update keeps the consolidated metadata it now holds.
        self.group = zarr.open_group(str(self.path), mode="r+", zarr_format=3, use_consolidated=True)
        self.group.attrs["complete"] = True


def _list_files(path):
    """Every file under path, as '/'-separated keys relative to it (one walk of the store)."""
    keys = set()
    for root, _dirs, files in os.walk(path):
        rel = os.path.relpath(root, path)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        keys.update(prefix + f for f in files)
    return keys


def _expected_chunks(array, prefix):
    encode = array.metadata.encode_chunk_key
    for coords in itertools.product(*(range(n) for n in array.cdata_shape)):
        yield f"{prefix}/{encode(coords)}"


def _chunk_channel(key):
    """The channel of a layer's chunk key ('train/conv1/c.3.7.0.0' -> 7)."""
    return int(key.rsplit("/", 1)[1].split(".")[2])


def _channels_without_chunks(array, missing):
    """Channels of an (N, C, H, W) layer none of whose chunks is among the stored ones."""
    per_channel = array.cdata_shape[0]
    counts = {}
    for key in missing:
        counts[_chunk_channel(key)] = counts.get(_chunk_channel(key), 0) + 1
    return sorted(c for c, n in counts.items() if n == per_channel)


def store_root(path):
    """The store's folder, given the folder or its root `zarr.json` (the extract rule's output)."""
    path = Path(path)
    return path.parent if path.name == "zarr.json" else path


def verify_store(path):
    """Raise StoreError unless path (the store's folder or its zarr.json) is a complete activation
    store with every chunk present.

    Returns the opened root group (read-only).
    """
    path = store_root(path)
    if not path.exists():
        raise StoreError(f"{path}: no activation store here (an extraction that did not finish leaves none; "
                         "rerun the extract stage)")
    if not (path / "zarr.json").is_file():
        # Snakemake deletes a store's zarr.json (the rule's output) before it reruns extract.
        raise StoreError(f"{path}: not a Zarr format 3 store (no zarr.json; an extraction that was rerun and "
                         "did not finish leaves none); rerun the extract stage")
    try:
        root = zarr.open_group(str(path), mode="r", zarr_format=3)
    except Exception as err:  # noqa: BLE001 - any failure to open means the store is unusable
        raise StoreError(f"{path}: cannot be opened as a Zarr group ({err})") from err
    attrs = root.attrs.asdict()
    if attrs.get("format") != FORMAT:
        raise StoreError(f"{path / 'zarr.json'}: activation store format {attrs.get('format')!r}, this reader reads "
                         f"format {FORMAT} only (per-layer dimension names, coordinates and consolidated metadata, "
                         "so that xarray opens it); rerun the extract stage to rewrite it "
                         "(snakemake --forcerun extract)")
    if attrs.get("complete") is not True:
        raise StoreError(f"{path}: incomplete activation store (the 'complete' attribute is missing: the "
                         "extraction was interrupted or is still running); rerun the extract stage")
    files = _list_files(path)
    problems = []
    if root.metadata.consolidated_metadata is None:
        problems.append("no consolidated metadata in zarr.json")
    for split, info in attrs["splits"].items():
        # Checked against the files too: the consolidated metadata would still list a deleted node.
        if split not in root or f"{split}/zarr.json" not in files:
            problems.append(f"group {split!r} is missing")
            continue
        group = root[split]
        n = info["n"]
        expected = {name: ((n,), (SAMPLE,)) for name in _RESERVED}
        expected.update({layer: ((n, *attrs["shapes"][layer]), dimension_names(layer)) for layer in attrs["layers"]})
        for name, (shape, dims) in expected.items():
            if name not in group or f"{split}/{name}/zarr.json" not in files:
                problems.append(f"array {split}/{name} is missing")
                continue
            arr = group[name]
            if tuple(arr.shape) != tuple(shape):
                problems.append(f"array {split}/{name} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
                continue
            if tuple(arr.metadata.dimension_names or ()) != dims:
                problems.append(f"array {split}/{name} has dimension names {arr.metadata.dimension_names}, "
                                f"expected {dims}")
            missing = [key for key in _expected_chunks(arr, f"{split}/{name}") if key not in files]
            empty = _channels_without_chunks(arr, missing) if name in attrs["layers"] else []
            if empty:
                # Zarr's default (write_empty_chunks false) drops a chunk equal to the fill value NaN.
                problems.append(f"non-finite data: channel(s) {empty[:10]} of {split}/{name} have no chunk stored, "
                                "so they read as NaN, the fill value (a channel overwritten with NaN, which zarr "
                                "does not store, or its chunk files deleted)")
                missing = [key for key in missing if _chunk_channel(key) not in empty]
            if missing:
                problems.append(f"array {split}/{name} lacks {len(missing)} of {arr.nchunks} chunks "
                                f"(e.g. {', '.join(missing[:3])})")
    if problems:
        raise StoreError(f"{path}: damaged activation store: " + "; ".join(problems) + "; rerun the extract stage")
    return root


class ActivationStore:
    """Read access to one split of a verified store. Arrays are read lazily, per request."""

    def __init__(self, path, root, split):
        self.path = Path(path)
        self.attrs = root.attrs.asdict()
        self.splits = tuple(self.attrs["splits"])
        if split not in self.splits:
            raise StoreError(f"{path}: no {split!r} split stored (splits: {list(self.splits)}; "
                             "set extract.test_split: true to store the test split)")
        self.split = split
        self._group = root[split]
        self.layers = list(self.attrs["layers"])
        self.labels = np.asarray(self._group["labels"][:], dtype=np.int64)
        self.indices = np.asarray(self._group["indices"][:], dtype=np.int64)
        self.n_samples = len(self.labels)
        self.shapes = {layer: (self.n_samples, *self.attrs["shapes"][layer]) for layer in self.layers}

    def __len__(self):
        return self.n_samples

    def __repr__(self):
        return f"ActivationStore({str(self.path)!r}, split={self.split!r}, N={self.n_samples}, layers={self.layers})"

    def _check_layer(self, layer):
        if layer not in self.shapes:
            raise KeyError(f"{self.path}: no layer {layer!r}; stored layers: {self.layers}")

    def array(self, layer):
        """The lazy zarr.Array of a layer, shape (N, C, H, W)."""
        self._check_layer(layer)
        return self._group[layer]

    def num_channels(self, layer):
        self._check_layer(layer)
        return self.shapes[layer][1]

    def channel(self, layer, c):
        """Channel c of every sample as an (N, H*W) float32 array; reads only that channel's chunks."""
        self._check_layer(layer)
        n, channels, h, w = self.shapes[layer]
        if not 0 <= c < channels:
            raise IndexError(f"{self.path}: layer {layer!r} has {channels} channels, asked for channel {c}")
        return np.ascontiguousarray(self._group[layer][:, c], dtype=np.float32).reshape(n, h * w)

    def samples(self, layer, positions=None, channels=None):
        """Layer values (N', C', H, W) float32 of the given sample positions (all when None) and
        channels (a slice or range of channels; all when None), reading only the chunks that hold
        them (a chunk is one channel of a run of samples)."""
        self._check_layer(layer)
        array = self._group[layer]
        if positions is not None:
            positions = np.asarray(positions, dtype=np.int64)
            if np.array_equal(positions, np.arange(array.shape[0])):
                positions = None  # every sample in order: a plain slice, cheaper than an orthogonal selection
        if isinstance(channels, range):
            channels = slice(channels.start, channels.stop)
        channels = slice(None) if channels is None else channels
        values = array[:, channels] if positions is None else array.oindex[positions, channels]
        return np.ascontiguousarray(values, dtype=np.float32)

    def aggregate(self, layer):
        """The whole layer as an (N, C*H*W) float32 array (channel-major: channel c is columns c*H*W ..)."""
        self._check_layer(layer)
        n = self.shapes[layer][0]
        return np.ascontiguousarray(self._group[layer][:], dtype=np.float32).reshape(n, -1)


def open_activations(path: str | os.PathLike, split: str = "train") -> ActivationStore:
    """Open a complete activation store (its folder, or its zarr.json) for reading; refuse an
    incomplete or damaged one.

    Returns an ActivationStore of one split ("train", or "test" where extract.test_split stored it):
    `layers` (names, depth order), `shapes` {layer: (N, C, H, W)}, `labels` and `indices` ((N,) int64),
    and lazy float32 readers: `samples(layer, positions=None, channels=None)` (N, C, H, W),
    `channel(layer, c)` (N, H*W), `aggregate(layer)` (N, C*H*W, channel-major), `array(layer)` (the
    zarr.Array, (N, C, H, W)). N is the number of stored samples (extract.n_samples).

    Raises StoreError naming the path and the problem: no store, no `complete` attribute
    (interrupted extraction), a missing array or chunk, or another format (a format 1 store,
    written before stores opened in xarray, is refused with a request to rerun extract).
    """
    root = verify_store(path)
    return ActivationStore(store_root(path), root, split)
