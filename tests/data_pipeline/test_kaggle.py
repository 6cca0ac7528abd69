import numpy as np
import pytest

from data_pipeline import (DataError, find_pairs, find_real_photos, load_eval_set, load_sample, scan_pairs,
                           scan_real_photos)


def test_pairs_are_sorted_by_frame_and_point_at_both_files(tiny_dataset):
    samples = find_pairs(tiny_dataset)
    assert [s.frame for s in samples] == [f"{i:04d}" for i in range(1, 25)]
    first = samples[0]
    assert first.image.name == "render0001.png" and first.mask.name == "clean0001.png" and first.source == "clean"


def test_ground_masks_are_an_option(tmp_path, write):
    root = write.dataset(tmp_path / "d", count=3, mask_source="ground")
    assert [s.mask.name for s in find_pairs(root, "ground")] == ["ground0001.png", "ground0002.png", "ground0003.png"]
    with pytest.raises(DataError, match="clean mask folder not found"):
        find_pairs(root, "clean")


def test_missing_folder_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'}: data folder not found"):
        find_pairs(tmp_path / "nope")
    (tmp_path / "images" / "clean").mkdir(parents=True)
    with pytest.raises(DataError, match="images/render: render folder not found"):
        find_pairs(tmp_path)


def test_folder_with_no_pairs_is_a_data_error(tmp_path):
    (tmp_path / "images" / "render").mkdir(parents=True)
    (tmp_path / "images" / "clean").mkdir(parents=True)
    (tmp_path / "images" / "render" / "notes.txt").write_text("not a frame")
    with pytest.raises(DataError, match="no render/clean pairs found"):
        find_pairs(tmp_path)


def test_unpaired_files_are_counted_listed_and_only_skipped_when_allowed(tiny_dataset):
    (tiny_dataset / "images/clean/clean0003.png").unlink()
    (tiny_dataset / "images/render/render0005.png").unlink()
    with pytest.raises(DataError) as err:
        find_pairs(tiny_dataset)
    message = str(err.value)
    assert "1 renders without a mask: render0003.png" in message
    assert "1 masks without a render: clean0005.png" in message and "allow_missing" in message
    frames = [s.frame for s in find_pairs(tiny_dataset, allow_missing=True)]
    assert len(frames) == 22 and "0003" not in frames and "0005" not in frames


def test_excluding_mismatches_without_the_list_is_an_error_naming_it(tiny_dataset):
    with pytest.raises(DataError, match=r"mismatch_IDs.txt: not found; exclude_mismatches \(--exclude-mismatches\)"):
        scan_pairs(tiny_dataset, exclude_mismatches=True)  # was silently no exclusion at all


def test_mismatched_frames_are_excluded_on_request(tiny_dataset):
    (tiny_dataset / "mismatch_IDs.txt").write_text("2\n0007, 19\n")
    scan = scan_pairs(tiny_dataset, exclude_mismatches=True)
    assert scan.excluded_frames == ["0002", "0007", "0019"] and len(scan.samples) == 21
    assert len(find_pairs(tiny_dataset)) == 24  # not excluded unless asked


def test_real_photos_pair_with_their_g_masks(shared_data):
    samples = find_real_photos(shared_data / "kaggle-eval-small")
    assert len(samples) == 28 and all(s.source == "real" for s in samples)
    assert samples[0].frame == "PCAM1" and samples[0].mask.name == "g_PCAM1.png"
    # the byte-exact samples have photos but no masks: nothing to evaluate, listed as unpaired
    scan = scan_real_photos(shared_data / "kaggle-samples")
    assert scan.samples == [] and len(scan.photos_without_mask) == 10


def test_photo_larger_than_its_mask_is_resized_to_the_mask(tmp_path, write):
    write.real_photo(tmp_path, "TCAM3", photo_size=(60, 84), mask_size=(40, 56))
    [sample] = find_real_photos(tmp_path)
    image, mask = load_sample(sample)
    assert image.shape == (40, 56, 3) and mask.shape == (40, 56)


def test_render_and_mask_of_different_sizes_is_a_data_error(tiny_dataset, write):
    write.png(tiny_dataset / "images/clean/clean0004.png", np.zeros((32, 64, 3), np.uint8))
    sample = find_pairs(tiny_dataset)[3]
    with pytest.raises(DataError, match=r"clean0004.png: mask is 64x32 but its render render0004.png is 64x64"):
        load_sample(sample)


def test_eval_sets_keep_each_image_at_its_own_size(shared_data):
    real = load_eval_set(shared_data / "kaggle-eval-small", kind="real")
    item = real[0]
    assert item.image.shape == (*item.mask.shape, 3) and item.mask.dtype == np.uint8
    renders = load_eval_set(shared_data / "kaggle-eval-small", kind="render", frames=["0034"])
    assert len(renders) == 1 and renders[0].image.shape == (282, 423, 3)
    with pytest.raises(DataError, match="1 requested frames are not in the data set: 9999"):
        load_eval_set(shared_data / "kaggle-eval-small", frames=["9999"])


def test_two_files_for_one_frame_number_are_named_not_paired_by_chance(tiny_dataset):
    """render1.png beside render0001.png: one of them silently paired with clean0001.png (the other vanished),
    which one depending on the folder's listing order."""
    import shutil

    shutil.copy(tiny_dataset / "images/render/render0002.png", tiny_dataset / "images/render/render1.png")
    with pytest.raises(DataError, match=r"render0001\.png and .*render1\.png: two files for frame 1; keep one"):
        find_pairs(tiny_dataset)
