import numpy as np
import pytest
import torch

from data_pipeline import (IMAGENET_MEAN, IMAGENET_STD, DataConfig, DataError, make_loaders, normalize_image,
                           prepare_dataset)
from data_pipeline.loader import SampleKey, _augment


def _cfg(root, tmp_path, **kw):
    base = dict(root=str(root), image_size=(32, 32), batch_size=4, val_fraction=0.25, test_fraction=0.25,
                cache_dir=str(tmp_path / "cache"))
    return DataConfig(**{**base, **kw})


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_batches_have_the_contract_shapes_and_dtypes(tiny_dataset, tmp_path):
    loaders = make_loaders(_cfg(tiny_dataset, tmp_path, image_size=(32, 48)))
    assert loaders.split_sizes == {"train": 12, "val": 6, "test": 6}
    x, y = next(iter(loaders.train))
    assert x.shape == (4, 3, 32, 48) and x.dtype == torch.float32
    assert y.shape == (4, 32, 48) and y.dtype == torch.int64 and int(y.max()) <= 3
    assert sum(len(b[0]) for b in loaders.val) == 6 and sum(len(b[0]) for b in loaders.test) == 6


def test_class_frequencies_are_the_train_pixel_shares(tiny_dataset, tmp_path):
    cfg = _cfg(tiny_dataset, tmp_path, augment=False)
    loaders = make_loaders(cfg)
    counts = sum(torch.bincount(y.ravel(), minlength=4) for _, y in loaders.train).numpy()
    assert loaders.class_frequencies.dtype == np.float64
    np.testing.assert_allclose(loaders.class_frequencies, counts / counts.sum())
    assert loaders.manifest_hash == prepare_dataset(cfg).hash


def test_images_are_imagenet_normalised_like_normalize_image(tiny_dataset, tmp_path):
    loaders = make_loaders(_cfg(tiny_dataset, tmp_path))
    x, _ = next(iter(loaders.val))
    raw = np.load(next((tmp_path / "cache").glob("val-*.images.npy")))[0]
    np.testing.assert_allclose(x[0].numpy(), normalize_image(raw), atol=1e-6)
    back = x[0].numpy() * np.array(IMAGENET_STD)[:, None, None] + np.array(IMAGENET_MEAN)[:, None, None]
    np.testing.assert_allclose(back * 255, raw.transpose(2, 0, 1), atol=1e-3)


def test_augmentation_is_seeded_varies_by_epoch_and_is_train_only(tiny_dataset, tmp_path):
    a, b = make_loaders(_cfg(tiny_dataset, tmp_path, seed=5)), make_loaders(_cfg(tiny_dataset, tmp_path, seed=5))
    epoch_a, epoch_b = _epoch(a.train), _epoch(b.train)
    assert len(epoch_a) == len(epoch_b) == 3  # zip would hide a short epoch
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(epoch_a, epoch_b))
    assert not torch.equal(_epoch(a.train)[0][0], epoch_a[0][0])  # the next epoch draws anew
    other = _epoch(make_loaders(_cfg(tiny_dataset, tmp_path, seed=6)).train)
    assert not torch.equal(other[0][0], epoch_a[0][0])
    val_1, val_2 = _epoch(a.val), _epoch(a.val)
    assert len(val_1) == len(val_2) >= 1 and all(torch.equal(p[0], q[0]) for p, q in zip(val_1, val_2))
    plain_val = _epoch(make_loaders(_cfg(tiny_dataset, tmp_path, seed=5, augment=False)).val)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(val_1, plain_val))  # train only


def test_augmentation_flips_some_train_frames_and_jitters_their_pixels(tiny_dataset, tmp_path):
    """Same seed with and without augment: the order is drawn first, so batches line up frame by frame."""
    plain = _epoch(make_loaders(_cfg(tiny_dataset, tmp_path, seed=5, augment=False)).train)
    augmented = _epoch(make_loaders(_cfg(tiny_dataset, tmp_path, seed=5, augment=True)).train)
    flipped = same = 0
    for (x, y), (xa, ya) in zip(plain, augmented):
        for label, label_a, image, image_a in zip(y, ya, x, xa):
            is_flip = torch.equal(label_a, label.flip(-1)) and not torch.equal(label_a, label)
            assert is_flip or torch.equal(label_a, label)
            flipped, same = flipped + is_flip, same + (not is_flip)
            assert not torch.equal(image_a, image.flip(-1) if is_flip else image)  # jittered as well
    assert flipped and same and flipped + same == 12


def test_a_batch_size_of_one_keeps_every_frame(tiny_dataset, tmp_path):
    loaders = make_loaders(_cfg(tiny_dataset, tmp_path, batch_size=1))
    assert len(loaders.train) == 12 and [len(x) for x, _ in loaders.train] == [1] * 12


def test_a_flip_moves_image_and_mask_together():
    batch = np.random.default_rng(0).random((2, 4, 6, 3), dtype=np.float32)
    labels = np.random.default_rng(1).integers(0, 4, (2, 4, 6)).astype(np.uint8)
    out, out_labels = _augment(batch.copy(), labels.copy(), [SampleKey(0, flip=True), SampleKey(1)])
    assert np.array_equal(out[0], batch[0, :, ::-1]) and np.array_equal(out_labels[0], labels[0, :, ::-1])
    assert np.array_equal(out[1], batch[1]) and np.array_equal(out_labels[1], labels[1])
    jittered, _ = _augment(batch.copy(), labels, [SampleKey(0, contrast=1.2, brightness=0.1)] * 2)
    assert not np.allclose(jittered, batch) and jittered.min() >= 0 and jittered.max() <= 1


def test_worker_processes_give_the_same_batches(tiny_dataset, tmp_path):
    single = _epoch(make_loaders(_cfg(tiny_dataset, tmp_path)).train)
    workers = _epoch(make_loaders(_cfg(tiny_dataset, tmp_path, num_workers=2)).train)
    assert len(single) == len(workers) == 3  # zip would hide a short or empty epoch
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(single, workers))


def test_no_test_split_when_asked_and_a_lone_last_train_batch_is_dropped(tiny_dataset, tmp_path):
    loaders = make_loaders(_cfg(tiny_dataset, tmp_path, test_fraction=0.0, val_fraction=0.25, batch_size=17))
    assert loaders.split_sizes["test"] == 0 and list(loaders.test) == []
    assert [len(x) for x, _ in loaders.train] == [17]  # 18 train frames: 17, then a lone 1 is dropped


def test_read_only_shared_data_is_never_written(shared_data, tmp_path):
    root = shared_data / "kaggle-eval-small"
    def snapshot():  # every file and folder with its mtime: root ignores the folder's read-only mode
        return {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    before = snapshot()
    loaders = make_loaders(DataConfig(root=str(root), image_size=(32, 48), cache_dir=str(tmp_path / "c")))
    assert sum(loaders.split_sizes.values()) == 40 and snapshot() == before
    assert loaders.manifest_path.parent == tmp_path / "c"


@pytest.mark.parametrize("field, value", [("image_size", (0, 32)), ("batch_size", 0), ("mask_source", "real"),
                                          ("num_workers", -1), ("num_workers", 99999)])
def test_bad_config_names_the_field(tiny_dataset, tmp_path, field, value):
    with pytest.raises(DataError, match=f"^{field}: expected"):
        make_loaders(_cfg(tiny_dataset, tmp_path, **{field: value}))


def test_too_small_a_data_set_fails_clearly(tmp_path, write):
    root = write.dataset(tmp_path / "d", count=2)
    with pytest.raises(DataError, match="data set too small"):
        make_loaders(_cfg(root, tmp_path))
