import json
import os

import torch

from diet import cache

KEY = {"model": "abc", "task": "boolq", "n_samples": 10}


def test_round_trip_and_key_sensitivity(tmp_path):
    store = cache.Cache(tmp_path, "profile")
    assert store.load_tensors(KEY) is None
    store.store_tensors(KEY, {"mlp.0/sum_abs": torch.arange(4.0)})
    assert torch.equal(store.load_tensors(KEY)["mlp.0/sum_abs"], torch.arange(4.0))
    assert store.load_tensors({**KEY, "n_samples": 11}) is None
    assert not [p for p in os.listdir(store.dir) if p.startswith(".")]  # no temp files left behind


def test_corrupt_or_mismatched_entries_are_rejected(tmp_path, caplog):
    store = cache.Cache(tmp_path, "profile")
    payload = store.store_tensors(KEY, {"x": torch.ones(8)})
    payload.write_bytes(payload.read_bytes()[:-5])  # truncated, e.g. a copy that broke off
    assert store.load_tensors(KEY) is None
    assert "unusable" in caplog.text and "sha256" in caplog.text
    store.store_tensors(KEY, {"x": torch.ones(8)})
    keyfile = payload.with_name(payload.name.replace(".safetensors", ".key.json"))
    record = json.loads(keyfile.read_text())
    record["key"]["task"] = "rte"  # a key file that belongs to another entry
    keyfile.write_text(json.dumps(record))
    assert store.load_tensors(KEY) is None


def test_payload_without_key_file_is_not_an_entry(tmp_path):
    """A job killed between the two renames leaves a payload with no key file: not loadable."""
    store = cache.Cache(tmp_path, "dense_eval")
    payload = store.store_json(KEY, {"acc": 0.5})
    payload.with_name(payload.name.replace(".json", ".key.json")).unlink()
    assert store.load_json(KEY) is None


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    cache.atomic_write_json(target, {"v": 1})

    def boom(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    try:
        cache.atomic_write_json(target, {"v": 2})
    except KeyboardInterrupt:
        pass
    assert json.loads(target.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["results.json"]


def test_racing_writers_leave_one_complete_entry(tmp_path):
    import threading

    store = cache.Cache(tmp_path, "profile")
    tensors = {"x": torch.arange(100_000.0)}
    threads = [threading.Thread(target=store.store_tensors, args=(KEY, tensors)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(store.load_tensors(KEY)["x"], tensors["x"])
    assert sorted(os.listdir(store.dir)) == sorted([f"{cache.digest(KEY)}.safetensors", f"{cache.digest(KEY)}.key.json"])
