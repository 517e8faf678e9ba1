"""The shared-memory pickles of fedsim's Ray transport: what goes in comes out, large bytes are written once
per writer, and no file outlives its round."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import pytest
import torch

from fedsim.engine import bulk_pickle
from fedsim.engine.bulk_pickle import BULK_BYTES, BulkWriter, read_bulk, remove_leftovers
from fedsim.state import to_record


def test_large_bytes_travel_through_one_file_once(tmp_path) -> None:
    record = to_record({"w": torch.randn(300, 300), "b": torch.randn(3)})  # one array above BULK_BYTES, one below
    writer = BulkWriter(tmp_path, "fedsim-test")
    first, second = writer.dumps([record, record]), writer.dumps({"again": record})
    size = writer.path.stat().st_size
    assert size == len(record["w"].data) and len(first) < BULK_BYTES  # the large array once, for both pickles
    for packed, unpacked in ((first, lambda o: o[1]), (second, lambda o: o["again"])):
        back = unpacked(pickle.loads(packed))
        assert back["w"].data == record["w"].data and back["b"].data == record["b"].data
    writer.remove()
    assert not writer.path.exists()


def test_a_truncated_file_is_an_error_not_short_data(tmp_path) -> None:
    writer = BulkWriter(tmp_path, "fedsim-test")
    packed = writer.dumps(to_record({"w": torch.zeros(BULK_BYTES)}))
    with open(writer.path, "r+b") as f:
        f.truncate(BULK_BYTES)
    with pytest.raises(EOFError):
        pickle.loads(packed)
    with pytest.raises(EOFError):
        read_bulk(str(writer.path), 0, BULK_BYTES + 1)


def test_leftovers_of_a_prefix_are_removed(tmp_path) -> None:
    for prefix in ("fedsim-a", "fedsim-a", "fedsim-b"):
        BulkWriter(tmp_path, prefix).dumps(to_record({"w": torch.zeros(BULK_BYTES)}))
    remove_leftovers(tmp_path, "fedsim-a")
    assert [p.name.rsplit("-", 1)[0] for p in tmp_path.iterdir()] == ["fedsim-b"]


def test_a_small_shared_memory_falls_back_to_the_temporary_folder(monkeypatch) -> None:
    monkeypatch.setattr(bulk_pickle, "SHM_FREE_BYTES", 2**62)  # more than any /dev/shm has free
    assert bulk_pickle.bulk_folder() == Path(tempfile.gettempdir())
