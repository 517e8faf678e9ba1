"""fedsim's fast .npy wire path reads and writes exactly what Flower's own Array does, hostile bytes included;
the fast finiteness screen agrees with the elementwise test."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedsim.validation import all_finite
from fedsim.wire import array_of, direct_array, from_record, new_array, numpy_of, to_record

TENSORS = {
    "matrix": torch.randn(3, 4),
    "transposed": torch.randn(4, 3).t(),
    "scalar": torch.tensor(3.0),
    "empty": torch.zeros(0, 3),
    "int8": torch.arange(-4, 4, dtype=torch.int8),
    "bool": torch.tensor([True, False]),
    "float64": torch.randn(2, 3, dtype=torch.float64),
    "float16": torch.randn(5).half(),
}


def test_records_round_trip_as_flower_reads_them() -> None:
    ours, flowers = to_record(TENSORS), ArrayRecord(torch_state_dict=TENSORS)
    for name, tensor in TENSORS.items():
        assert (ours[name].dtype, tuple(ours[name].shape)) == (flowers[name].dtype, tuple(flowers[name].shape))
        if tensor.is_contiguous():
            assert ours[name].data == flowers[name].data  # byte for byte what np.save writes
        assert np.array_equal(ours[name].numpy(), flowers[name].numpy())  # Flower reads ours
    for record in (ours, flowers):
        back, reference = from_record(record), record.to_torch_state_dict()
        for name in TENSORS:
            assert back[name].dtype == reference[name].dtype and torch.equal(back[name], reference[name])


def test_arrays_are_the_objects_flowers_constructor_builds() -> None:
    assert new_array is direct_array  # the pinned Flower's Array holds exactly these attributes
    for name, tensor in TENSORS.items():
        values = tensor.contiguous().numpy()
        ours, flowers = array_of(values), Array(values)
        assert type(ours) is Array and vars(ours) == vars(flowers), name
        assert ours.object_id == flowers.object_id and ours.deflate() == flowers.deflate()
        ours.data = b""  # Flower's own attribute logic still runs on ours
        assert ours.is_dirty and ours.object_id != flowers.object_id


def npy(values: np.ndarray, version: tuple[int, int] = (1, 0)) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, values, version=version, allow_pickle=False)
    return out.getvalue()


GOOD = npy(np.arange(6, dtype=np.float32).reshape(2, 3))
HOSTILE = {
    "truncated": GOOD[:-4],
    "trailing bytes": GOOD + b"\x00" * 8,
    "code in the header": b"\x93NUMPY\x01\x00\x1c\x00{'descr': __import__('os')}\n",
    "header longer than the data": GOOD[:8] + b"\xff\xff" + GOOD[10:],
    "version 2.0 header": npy(np.arange(3, dtype=np.float32), (2, 0)),
    "Fortran order": npy(np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))),
    "big-endian": npy(np.arange(3, dtype=">f4")),
    "not npy at all": b"hello",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_bytes_read_as_flower_reads_them(case: str) -> None:
    array = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=HOSTILE[case])
    try:
        expected = array.numpy()
    except Exception as exc:  # Flower refuses it: so do we, with the same error
        with pytest.raises(type(exc)):
            numpy_of(array)
    else:
        got = numpy_of(array)
        assert got.dtype == expected.dtype and got.shape == expected.shape and np.array_equal(got, expected)
        assert got.flags.writeable


def test_object_arrays_are_refused() -> None:
    with pytest.raises(ValueError):
        array_of(np.array([object()], dtype=object))


@pytest.mark.parametrize("seed", range(20))
def test_finiteness_screen_matches_elementwise(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensor = torch.randn(50, generator=gen) * 10.0 ** float(torch.randint(0, 39, (), generator=gen))
    for _ in range(int(torch.randint(0, 3, (), generator=gen))):
        tensor[int(torch.randint(0, 50, (), generator=gen))] = (float("nan"), float("inf"), -float("inf"))[seed % 3]
    for dtype in (torch.float32, torch.float64, torch.float16):
        values = tensor.to(dtype)
        assert all_finite(values) == bool(torch.isfinite(values).all())
    assert all_finite(torch.full((10,), 3e38)) and not all_finite(torch.tensor([float("inf"), -float("inf")]))
    assert all_finite(torch.tensor([1 + 2j, 3e38j])) and not all_finite(torch.tensor([1 + 2j, complex(0, float("nan"))]))
