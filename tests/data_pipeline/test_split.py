import json
import os

import pytest

from data_pipeline import DataError, find_pairs, load_or_create_split
from data_pipeline.split import MANIFEST_NAME, prepare_split, split_frames


def test_split_is_deterministic_disjoint_and_complete():
    frames = [f"{i:04d}" for i in range(1, 101)]
    a = split_frames(frames, seed=3, val_fraction=0.2, test_fraction=0.1)
    assert a == split_frames(list(reversed(frames)), seed=3, val_fraction=0.2, test_fraction=0.1)
    assert {k: len(v) for k, v in a.items()} == {"train": 70, "val": 20, "test": 10}
    assert sorted(a["train"] + a["val"] + a["test"]) == frames
    assert a != split_frames(frames, seed=4, val_fraction=0.2, test_fraction=0.1)


def test_adding_frames_moves_few_existing_frames():
    before = split_frames([f"{i:04d}" for i in range(1, 201)], 0, 0.15, 0.15)
    after = split_frames([f"{i:04d}" for i in range(1, 211)], 0, 0.15, 0.15)
    moved = sum(f not in after[name] for name, frames in before.items() for f in frames)
    assert moved <= 10  # a reshuffle would move ~80 of 200


def test_manifest_is_written_once_beside_the_data_and_reused(tiny_dataset):
    samples = find_pairs(tiny_dataset)
    first = prepare_split(tiny_dataset, 0, 0.2, 0.2, samples)
    path = tiny_dataset / MANIFEST_NAME
    assert first.path == path and json.loads(path.read_text())["hash"] == first.hash
    stamp = path.stat().st_mtime_ns
    again = prepare_split(tiny_dataset, 0, 0.2, 0.2, find_pairs(tiny_dataset))
    assert again.hash == first.hash and again.splits == first.splits
    assert path.stat().st_mtime_ns == stamp  # read, not rewritten
    assert load_or_create_split(tiny_dataset, 0, 0.2, 0.2, samples) == first.splits


@pytest.mark.parametrize("bad", [[1, 2], None, "0001"])
def test_a_hand_edited_manifest_with_bad_lists_is_an_error_naming_it(tiny_dataset, bad):
    samples = find_pairs(tiny_dataset)
    manifest = prepare_split(tiny_dataset, 0, 0.2, 0.2, samples)
    data = json.loads(manifest.path.read_text())
    data["splits"]["val"] = bad
    manifest.path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"{manifest.path}: split manifest has no train/val/test lists"):
        prepare_split(tiny_dataset, 0, 0.2, 0.2, samples)


def test_written_split_wins_over_the_rule(tiny_dataset):
    samples = find_pairs(tiny_dataset)
    manifest = prepare_split(tiny_dataset, 0, 0.2, 0.2, samples)
    data = json.loads(manifest.path.read_text())
    data["splits"]["train"], data["splits"]["val"] = data["splits"]["val"], data["splits"]["train"]
    manifest.path.write_text(json.dumps(data))
    assert prepare_split(tiny_dataset, 0, 0.2, 0.2, samples).splits["val"] == manifest.splits["train"]


def test_other_parameters_give_a_new_split_and_hash(tiny_dataset):
    samples = find_pairs(tiny_dataset)
    a = prepare_split(tiny_dataset, 0, 0.2, 0.2, samples)
    b = prepare_split(tiny_dataset, 1, 0.2, 0.2, samples)
    assert a.hash != b.hash and a.splits != b.splits


def test_changed_files_keep_the_split_but_change_the_hash(tiny_dataset, write):
    a = prepare_split(tiny_dataset, 0, 0.2, 0.2, find_pairs(tiny_dataset))
    mask = tiny_dataset / "images/clean/clean0001.png"
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))
    b = prepare_split(tiny_dataset, 0, 0.2, 0.2, find_pairs(tiny_dataset))
    assert b.splits == a.splits and b.files_hash != a.files_hash and b.hash != a.hash


def test_too_small_a_data_set_is_a_data_error(tmp_path, write):
    root = write.dataset(tmp_path / "d", count=3)
    with pytest.raises(DataError, match=r"data set too small: 3 frames leave the val split empty \(val_fraction=0.1, test_fraction=0.1\); 6 frames at least"):
        prepare_split(root, 0, 0.1, 0.1, find_pairs(root))


@pytest.mark.parametrize("val, test, field", [(0.0, 0.1, "val_fraction"), (0.5, -0.1, "test_fraction"),
                                              (0.6, 0.4, "val_fraction \\+ test_fraction")])
def test_bad_fractions_name_the_field(val, test, field):
    with pytest.raises(DataError, match=f"^{field}: expected"):
        split_frames(["0001", "0002"], 0, val, test)


def test_read_only_data_folder_puts_the_manifest_elsewhere(tiny_dataset, tmp_path, monkeypatch):
    samples = find_pairs(tiny_dataset)
    tiny_dataset.chmod(0o555)
    try:
        beside_cache = prepare_split(tiny_dataset, 0, 0.2, 0.2, samples, cache_dir=tmp_path / "cache")
        assert beside_cache.path.parent == tmp_path / "cache"
        monkeypatch.setenv("HOME", str(tmp_path / "home"))  # Path.home() for the per-user fallback
        per_user = prepare_split(tiny_dataset, 0, 0.2, 0.2, samples)
        assert per_user.path.is_relative_to(tmp_path / "home" / ".cache" / "lunartune")
        assert not (tiny_dataset / MANIFEST_NAME).exists()
    finally:
        tiny_dataset.chmod(0o755)
