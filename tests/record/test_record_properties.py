"""Property-based tests of the recording file (Hypothesis).

* Damage, whatever it is: start from a valid file of a tiny model, change one metadata field to
  a generated value (or delete it, or add one), change one array (dtype, shape, bytes, gone, an
  extra one), or flip one byte of the archive. ``load_recording`` then either raises a
  ``ValueError`` that names the file, and nothing else, or returns a recording that is sound:
  its layer info passes ``check_layer_info``, the analyses run on it, and it saves and loads
  back the same. A deleted or unknown key, or a missing or extra array, always raises.
* For any valid recording (a ``Recording`` built from generated layers, arrays of random bits
  with NaN payloads included, tags or none; a ``Recorder`` fed random batches with or without a
  reservoir), save then load gives the same layers, info, selections, labels, ids and optional
  arrays, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dgclab.analysis import channel_usage, head_overlap, realized_macs
from dgclab.layers import DGCConv2d, set_pruning_progress
from dgclab.layers.dgc import final_inactive_channels
from dgclab.record import (
    LAYER_INFO_KEYS, Recorder, Recording, check_layer_info, load_recording, save_recording,
)
from helpers import assert_same_recording as assert_same

# Bounded for CI: well under 30 s for the whole file on one core. No example database (it would
# be written into the working tree).
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# ---- a valid file to damage ------------------------------------------------------------------


def tiny_model() -> nn.Module:
    """A 1x1 DGC layer (12 channels: 4 padding bits) and a strided, padded 3x3 one."""
    torch.manual_seed(0)
    model = nn.Sequential(
        DGCConv2d(12, 16, 1, heads=2, squeeze_rate=2),
        DGCConv2d(16, 8, 3, stride=2, padding=1, heads=4, squeeze_rate=2),
    ).eval()
    set_pruning_progress(model, 1.0)
    return model


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A recording with every kind of array, as a file and as its arrays."""
    model = tiny_model()
    with torch.no_grad(), Recorder(model, saliency=True, activations=True) as rec:
        rec.tag(labels=torch.tensor([0, 1, 2, 3, 4, 5]), ids=torch.arange(10, 16))
        model(torch.randn(6, 12, 5, 5))
    path = tmp_path_factory.mktemp("valid") / "valid.npz"
    rec.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    return path, arrays


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("damaged")


def _meta(arrays) -> dict:
    return json.loads(arrays["metadata"].tobytes())


def _write(folder: Path, arrays: dict, name: str) -> Path:
    path = folder / name
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def assert_sound(rec: Recording, folder: Path) -> None:
    """What a loaded recording must allow: its info is valid, analyses run, it round-trips."""
    for name in rec.layer_names:
        info = rec.layer_info(name)
        assert check_layer_info(info) == info
    realized_macs(rec)
    realized_macs(rec, per_layer=True)
    channel_usage(rec)
    head_overlap(rec)
    again = folder / "again.npz"
    save_recording(rec, again)
    assert_same(rec, load_recording(again))


def _loads_cleanly_or_names_the_file(path: Path, folder: Path, must_fail: bool) -> None:
    try:
        rec = load_recording(path)
    except ValueError as e:  # anything else fails the test with its own traceback
        assert path.name in str(e), str(e)
        return
    assert not must_fail, "the damage was not noticed"
    assert_sound(rec, folder)


# ---- damaged metadata -------------------------------------------------------------------------

# What a hand edit or a corrupted file can put into a JSON field: small ints and pairs near the
# valid ranges (0, negatives, too large), other JSON types, NaN and Inf (json reads them).
SCALARS = st.one_of(
    st.integers(-3, 40),
    st.integers(min_value=2**31),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(st.integers(-2, 8), max_size=3),
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=3), SCALARS, max_size=2),
)
# (where, key): a top-level key, a key of layer i, or a key of layer i's info.
FIELDS = st.one_of(
    st.tuples(st.just("top"), st.sampled_from(["format", "version", "num_samples", "layers"])),
    st.tuples(st.sampled_from([0, 1]),
              st.sampled_from(["name", "info", "saliencies", "activation_max"])),
    st.tuples(st.sampled_from(["info0", "info1"]), st.sampled_from(LAYER_INFO_KEYS)),
)


def _target(meta: dict, where) -> dict:
    if where == "top":
        return meta
    if isinstance(where, int):
        return meta["layers"][where]
    return meta["layers"][int(where[-1])]["info"]


@SETTINGS
@given(field=FIELDS, action=st.sampled_from(["replace", "delete", "add"]), value=VALUES,
       extra=st.text(min_size=1, max_size=6))
def test_damaged_metadata_fails_cleanly_or_loads_soundly(valid, work, field, action, value,
                                                         extra):
    _, arrays = valid
    meta = _meta(arrays)
    where, key = field
    target = _target(meta, where)
    if action == "replace":
        assume(target[key] != value or type(target[key]) is not type(value))
        target[key] = value
    elif action == "delete":
        del target[key]
    else:
        assume(extra not in target)
        target[extra] = value
    text = json.dumps(meta, allow_nan=True)  # NaN and Infinity as json.loads reads them
    damaged = dict(arrays, metadata=np.frombuffer(text.encode(), dtype=np.uint8))
    path = _write(work, damaged, "meta-damaged.npz")
    # A layer info without "kind" is a file written before kinds existed: a DGC layer, whose
    # recordings still load (every file here holds DGC layers).
    legacy = action == "delete" and key == "kind" and where in ("info0", "info1")
    _loads_cleanly_or_names_the_file(path, work, must_fail=action != "replace" and not legacy)


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=64),
                     st.text(max_size=64).map(str.encode),
                     st.integers(0, 400)))
def test_damaged_metadata_bytes_fail_cleanly(valid, work, raw):
    """The JSON text itself: arbitrary bytes, arbitrary text, or the valid text cut short."""
    _, arrays = valid
    if isinstance(raw, int):
        raw = arrays["metadata"].tobytes()[:raw]
    damaged = dict(arrays, metadata=np.frombuffer(raw, dtype=np.uint8))
    path = _write(work, damaged, "bytes-damaged.npz")
    _loads_cleanly_or_names_the_file(path, work, must_fail=False)


# ---- damaged arrays ---------------------------------------------------------------------------

ARRAY_KEYS = ["metadata", "labels", "ids", "selections_0", "selections_1", "saliencies_0",
              "saliencies_1", "activation_max_0", "activation_max_1"]
DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.uint64,
          np.float16, np.float32, np.float64, ">i8", ">f2"]


@SETTINGS
@given(key=st.sampled_from(ARRAY_KEYS),
       action=st.sampled_from(["drop", "dtype", "rows", "reshape", "bits", "extra", "object",
                               "scalar"]),
       dtype=st.sampled_from(DTYPES), rows=st.integers(-3, 3), seed=st.integers(0, 2**32 - 1))
def test_damaged_arrays_fail_cleanly_or_load_soundly(valid, work, key, action, dtype, rows,
                                                     seed):
    _, arrays = valid
    arrays = dict(arrays)
    arr = arrays[key]
    rng = np.random.default_rng(seed)
    if action == "drop":
        del arrays[key]
    elif action == "dtype":
        arrays[key] = arr.astype(dtype)
    elif action == "rows":  # more or fewer samples than the metadata says
        assume(rows != 0)
        arrays[key] = np.concatenate([arr, arr[:rows]]) if rows > 0 else arr[:rows]
    elif action == "reshape":
        arrays[key] = arr.reshape(arr.shape[0], -1) if arr.ndim == 1 else arr.reshape(-1)
    elif action == "bits":  # same shape and dtype, random bytes (padding bits, NaNs, anything)
        raw = rng.integers(0, 256, arr.nbytes, dtype=np.uint8)
        arrays[key] = raw.view(arr.dtype).reshape(arr.shape)
    elif action == "extra":
        arrays[f"{key}_copy"] = arr
    elif action == "object":  # np.savez pickles it; the loader must not unpickle
        arrays[key] = np.array([None, {"a": 1}], dtype=object)
    else:
        arrays[key] = np.asarray(arr.ravel()[0] if arr.size else 0)
    path = _write(work, arrays, "array-damaged.npz")
    _loads_cleanly_or_names_the_file(path, work, must_fail=action in ("drop", "extra"))


@SETTINGS
@given(offset=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
def test_a_flipped_byte_anywhere_fails_cleanly_or_loads_soundly(valid, work, offset, xor):
    path, _ = valid
    data = bytearray(path.read_bytes())
    data[int(offset * len(data))] ^= xor
    flipped = work / "flipped.npz"
    flipped.write_bytes(bytes(data))
    _loads_cleanly_or_names_the_file(flipped, work, must_fail=False)


# ---- valid recordings round-trip --------------------------------------------------------------


def _keeps_a_channel(c: int, rate: float) -> bool:
    try:
        return final_inactive_channels(c, rate) < c
    except ValueError:  # it may refuse such a rate itself
        return False


@st.composite
def layer_infos(draw) -> dict:
    """Any info ``check_layer_info`` accepts, near its edges (k = 0, C - 1, tiny inputs)."""
    c = draw(st.integers(1, 20))
    heads = draw(st.integers(1, 4))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    hw = tuple(  # the smallest input the kernel fits in, and a little more
        draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 9))
        for k, d, p in zip(kernel, dilation, padding)
    )
    rate = draw(st.one_of(st.just(0.0), st.floats(0, 1, exclude_max=True)))
    assume(_keeps_a_channel(c, rate))
    info = {
        "in_channels": c,
        "out_channels": heads * draw(st.integers(1, 4)),
        "kernel_size": kernel,
        "stride": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "padding": padding,
        "dilation": dilation,
        "heads": heads,
        "hidden": draw(st.integers(1, 8)),
        "pruning_rate": rate,
        "inactive_channels": draw(st.integers(0, c - 1)),
        "input_hw": hw,
    }
    # As a user may write them: a pair as a list, an equal pair as one int, numpy scalars.
    for key in ("kernel_size", "stride", "padding", "dilation", "input_hw"):
        pair = info[key]
        forms = [pair, list(pair)] + ([pair[0]] if pair[0] == pair[1] else [])
        info[key] = draw(st.sampled_from(forms))
    for key in ("in_channels", "heads", "inactive_channels"):
        info[key] = draw(st.sampled_from([info[key], np.int64(info[key])]))
    info["pruning_rate"] = draw(st.sampled_from([rate, np.float64(rate)]))
    return info


@st.composite
def recordings(draw) -> Recording:
    n = draw(st.integers(0, 6))
    names = draw(st.lists(st.text(max_size=8), max_size=3, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    int64 = st.integers(-(2**63), 2**63 - 1)
    selections, info, saliencies, activation_max = {}, {}, {}, {}
    for name in names:
        layer = info[name] = draw(layer_infos())
        heads, c = layer["heads"], layer["in_channels"]
        selections[name] = torch.from_numpy(rng.random((n, heads, c)) < 0.5)
        if draw(st.booleans()):  # random bits: NaNs with payloads, Infs, subnormals
            bits = rng.integers(0, 2**16, (n, heads, c), dtype=np.uint16)
            saliencies[name] = bits.view(np.float16)
        if draw(st.booleans()):
            bits = rng.integers(0, 2**32, (n, layer["out_channels"]), dtype=np.uint32)
            activation_max[name] = bits.view(np.float32)
    if not names:
        n = 0
    labels = draw(st.one_of(st.none(), st.lists(int64, min_size=n, max_size=n)))
    ids = draw(st.one_of(st.none(), st.lists(int64, min_size=n, max_size=n)))
    return Recording(selections, info,
                     labels=None if labels is None else np.array(labels, dtype=np.int64),
                     ids=None if ids is None else np.array(ids, dtype=np.int64),
                     saliencies=saliencies, activation_max=activation_max)


@SETTINGS
@given(rec=recordings())
def test_a_valid_recording_round_trips_bit_for_bit(work, rec):
    for name in rec.layer_names:  # held in one form: ints, pairs as tuples, a float rate
        info = rec.layer_info(name)
        assert all(type(info[k]) is int for k in ("in_channels", "heads", "inactive_channels"))
        assert type(info["pruning_rate"]) is float and type(info["stride"]) is tuple
    path = work / "round-trip.npz"
    rec.save(path)
    loaded = load_recording(path)
    assert_same(rec, loaded)
    save_recording(loaded, work / "round-trip-again.npz")
    assert_same(loaded, load_recording(work / "round-trip-again.npz"))


@SETTINGS
@given(batches=st.lists(st.integers(0, 5), min_size=1, max_size=5),
       max_samples=st.one_of(st.none(), st.integers(1, 8)),
       tagged=st.lists(st.booleans(), min_size=5, max_size=5),
       saliency=st.booleans(), activations=st.booleans())
def test_a_recorder_round_trips_bit_for_bit(work, batches, max_samples, tagged, saliency,
                                            activations):
    model = tiny_model()
    gen = torch.Generator().manual_seed(len(batches))
    with torch.no_grad(), Recorder(model, saliency=saliency, activations=activations,
                                   max_samples=max_samples) as rec:
        seen = 0
        for b, tag in zip(batches, tagged):
            if tag:
                rec.tag(labels=torch.arange(b) % 3, ids=torch.arange(seen, seen + b) * 7)
            model(torch.randn(b, 12, 3, 3, generator=gen))
            seen += b
    path = work / "recorder.npz"
    rec.save(path)
    loaded = load_recording(path)
    assert_same(rec, loaded)
    assert len(loaded) == min(seen, max_samples or seen)
