import multiprocessing
import os

import numpy as np
import pytest
from PIL import Image

from data_pipeline import DataError, find_pairs, load_sample, resize_image, resize_mask
from data_pipeline.cache import build_or_load, default_cache_dir


def test_first_use_builds_and_later_uses_read_the_same_files(tiny_dataset, tmp_path):
    samples = find_pairs(tiny_dataset)[:6]
    built = build_or_load(samples, "train", (32, 48), tmp_path / "c")
    stamp = built.images_path.stat().st_mtime_ns
    again = build_or_load(samples, "train", (32, 48), tmp_path / "c")
    assert again.images_path == built.images_path and again.images_path.stat().st_mtime_ns == stamp
    images, masks = again.open()
    assert isinstance(images, np.memmap) and images.shape == (6, 32, 48, 3) and masks.shape == (6, 32, 48)
    image, mask = load_sample(samples[2])
    assert np.array_equal(images[2], resize_image(image, (32, 48)))
    assert np.array_equal(masks[2], resize_mask(mask, (32, 48)))
    assert again.class_counts.sum() == 6 * 32 * 48
    assert again.class_counts.tolist() == np.bincount(masks.ravel(), minlength=4).tolist()


def test_changed_source_file_invalidates_the_cache(tiny_dataset, tmp_path):
    samples = find_pairs(tiny_dataset)[:4]
    old = build_or_load(samples, "val", (16, 16), tmp_path / "c")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(samples[0].mask)  # all ground now
    new = build_or_load(find_pairs(tiny_dataset)[:4], "val", (16, 16), tmp_path / "c")
    assert new.images_path != old.images_path and not old.images_path.exists()  # stale arrays removed
    assert (new.open()[1][0] == 0).all()


def test_sizes_and_splits_get_their_own_arrays(tiny_dataset, tmp_path):
    samples = find_pairs(tiny_dataset)[:3]
    a = build_or_load(samples, "train", (16, 16), tmp_path / "c")
    b = build_or_load(samples, "train", (24, 16), tmp_path / "c")
    c = build_or_load(samples, "val", (16, 16), tmp_path / "c")
    assert len({a.images_path, b.images_path, c.images_path}) == 3 and a.images_path.exists()


def _build_in_process(args):
    samples, cache_dir, barrier = args
    barrier.wait()  # start both builders at the same moment
    cached = build_or_load(samples, "train", (32, 32), cache_dir, progress=False)
    images, masks = cached.open()
    return str(cached.images_path), int(images.astype(np.int64).sum()), int(masks.astype(np.int64).sum())


def test_concurrent_builders_never_see_half_an_array(tiny_dataset, tmp_path):
    samples = find_pairs(tiny_dataset)
    context = multiprocessing.get_context("fork")
    barrier = context.Manager().Barrier(3)
    with context.Pool(3) as pool:
        results = pool.map(_build_in_process, [(samples, tmp_path / "c", barrier)] * 3)
    assert len(set(results)) == 1  # same file, same contents for every builder
    alone = build_or_load(samples, "train", (32, 32), tmp_path / "alone", progress=False).open()
    assert results[0][1:] == (int(alone[0].astype(np.int64).sum()), int(alone[1].astype(np.int64).sum()))
    leftovers = [p.name for p in (tmp_path / "c").iterdir() if ".tmp" in p.name]
    assert leftovers == []


def test_corrupt_png_fails_the_build_naming_it_and_leaves_no_cache(tiny_dataset, tmp_path):
    samples = find_pairs(tiny_dataset)[:4]
    samples[1].image.write_bytes(samples[1].image.read_bytes()[:200])
    with pytest.raises(DataError, match="render0002.png: cannot decode image"):
        build_or_load(samples, "train", (16, 16), tmp_path / "c")
    assert not any(p.suffix in (".npy", ".json") for p in (tmp_path / "c").iterdir())


def test_default_cache_dir_falls_back_when_the_data_is_read_only(tiny_dataset, tmp_path, monkeypatch):
    assert default_cache_dir(tiny_dataset) == tiny_dataset / ".lunartune_cache"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    os.chmod(tiny_dataset, 0o555)
    try:
        assert default_cache_dir(tiny_dataset).is_relative_to(tmp_path / "home" / ".cache" / "lunartune")
    finally:
        os.chmod(tiny_dataset, 0o755)


def test_an_incomplete_cache_is_rebuilt_not_read(tiny_dataset, tmp_path):
    samples = find_pairs(tiny_dataset)[:4]
    built = build_or_load(samples, "train", (16, 16), tmp_path / "c")
    expected = np.array(built.open()[0])
    with open(built.images_path, "r+b") as f:  # what a crashed writer without temp files would leave
        f.truncate(built.images_path.stat().st_size // 2)
    rebuilt = build_or_load(samples, "train", (16, 16), tmp_path / "c")
    assert np.array_equal(rebuilt.open()[0], expected)


def test_another_frame_list_over_unchanged_files_keeps_its_cache(tiny_dataset, tmp_path):
    # two configurations of one data folder (another split seed, --exclude-mismatches) build caches of the
    # same split and size: neither may delete the other's arrays, which a running sweep may not have opened
    samples = find_pairs(tiny_dataset)
    first = build_or_load(samples[:4], "train", (16, 16), tmp_path / "c")
    second = build_or_load(samples[1:5], "train", (16, 16), tmp_path / "c")
    assert first.images_path != second.images_path
    images, masks = first.open()
    assert images.shape == (4, 16, 16, 3) and second.open()[0].shape == (4, 16, 16, 3)
    # a file only the first list holds changes: the first cache is stale now and goes at the next build
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(samples[0].mask)
    rebuilt = build_or_load(find_pairs(tiny_dataset)[:4], "train", (16, 16), tmp_path / "c")
    assert not first.images_path.exists() and second.images_path.exists() and rebuilt.images_path.exists()


def test_a_killed_build_leaves_temporary_arrays_that_the_next_build_removes(tiny_dataset, tmp_path):
    samples = find_pairs(tiny_dataset)[:3]
    built = build_or_load(samples, "train", (16, 16), tmp_path / "c")
    stem = built.images_path.name[:-len(".images.npy")]
    for path in (built.images_path, built.masks_path, built.images_path.with_name(stem + ".json")):
        path.unlink()
    orphans = [tmp_path / "c" / f".{stem}.{kind}.4242.tmp.npy" for kind in ("images", "masks")]
    for orphan in orphans:  # what a SIGKILLed builder (pid 4242) leaves: its finally never ran
        orphan.write_bytes(b"half an array")
    build_or_load(samples, "train", (16, 16), tmp_path / "c")
    assert not any(orphan.exists() for orphan in orphans)
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if ".tmp" in p.name) == []


@pytest.mark.parametrize("meta", ['{"frames": ["0001"]}', "[1, 2]", '{"frames": 3, "class_counts": [0, 0, 0, 0]}'])
def test_metadata_that_is_not_a_caches_is_rebuilt(tiny_dataset, tmp_path, meta):
    """Valid JSON without class_counts (or not an object at all) was a raw KeyError/AttributeError."""
    samples = find_pairs(tiny_dataset)[:3]
    built = build_or_load(samples, "train", (16, 16), tmp_path / "c")
    expected = np.array(built.open()[1])
    meta_path = built.images_path.with_name(built.images_path.name[:-len(".images.npy")] + ".json")
    meta_path.write_text(meta)
    rebuilt = build_or_load(samples, "train", (16, 16), tmp_path / "c")
    assert np.array_equal(rebuilt.open()[1], expected) and len(rebuilt.frames) == 3


def _build_under_a_file_size_limit(root, cache_dir, limit, queue):
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write then fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        build_or_load(find_pairs(root), "train", (64, 64), cache_dir)
        queue.put("built")
    except Exception as err:
        queue.put(f"{type(err).__name__}: {err}")


def test_a_cache_that_does_not_fit_is_a_clear_error_naming_the_folder(tiny_dataset, tmp_path):
    """No room for the arrays (a full disk, a quota; here a file size limit) was a raw OSError, or worse a
    SIGBUS while writing through the sparse map; the space is reserved first, and the error names the folder."""
    queue = multiprocessing.get_context("fork").Queue()
    worker = multiprocessing.get_context("fork").Process(
        target=_build_under_a_file_size_limit, args=(tiny_dataset, tmp_path / "c", 100_000, queue))
    worker.start()
    worker.join(60)
    said = queue.get(timeout=5)
    assert said.startswith(f"DataError: {tmp_path / 'c'}: cannot build the train cache there (File too large; "
                           f"it needs 0.4 MiB): free space there"), said
    assert not [p for p in (tmp_path / "c").iterdir() if p.suffix in (".npy", ".json")]


def test_the_arrays_space_is_reserved_before_they_are_written(tiny_dataset, tmp_path, monkeypatch):
    """Written through a sparse map, a full disk is SIGBUS mid-build (no message, the trial just dies):
    the blocks are reserved first, where a full disk is an ordinary ENOSPC."""
    import errno

    def full_disk(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full_disk)
    with pytest.raises(DataError, match=r"cannot build the train cache there \(No space left on device; it needs "
                                        r"[\d.]+ MiB\): free space there"):
        build_or_load(find_pairs(tiny_dataset)[:4], "train", (16, 16), tmp_path / "c")
    assert not [p for p in (tmp_path / "c").iterdir() if p.suffix in (".npy", ".json")]  # no half-built arrays
