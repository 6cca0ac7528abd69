import numpy as np
import pytest
from PIL import Image

from data_pipeline import DataError, load_rgb, read_size, resize_image, resize_mask, save_rgb


def _mode(path) -> str:
    with Image.open(path) as image:
        return image.mode


def test_rgba_real_photos_load_as_rgb(shared_data):
    folder = shared_data / "kaggle-samples/real_moon_images"
    rgba = [p for p in sorted(folder.glob("PCAM*.png")) if _mode(p) == "RGBA"]
    assert rgba, "the samples are documented to include RGBA photos"
    image = load_rgb(rgba[0])
    assert image.shape == (571, 777, 3) and image.dtype == np.uint8


def test_rgba_and_grey_files_become_rgb(tmp_path):
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 5), 9, dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    assert load_rgb(tmp_path / "a.png")[0, 0].tolist() == [200, 0, 0]  # alpha dropped, colour kept
    assert load_rgb(tmp_path / "g.png").shape == (4, 5, 3)


def test_a_jpeg_stored_sideways_loads_as_viewers_show_it(tmp_path):
    """Cameras store portrait photos landscape with an EXIF orientation; predict masked them sideways."""
    stored = np.zeros((30, 40, 3), dtype=np.uint8)
    stored[:, :20] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(tmp_path / "portrait.jpg", exif=exif.tobytes(), quality=95)
    image = load_rgb(tmp_path / "portrait.jpg")
    assert image.shape == (40, 30, 3) and read_size(tmp_path / "portrait.jpg") == (40, 30)
    assert image[:18].mean() > 200 and image[22:].mean() < 50  # the stored left half is now on top


def test_16_bit_grey_is_refused_not_clipped_to_white(tmp_path):
    Image.fromarray(np.full((4, 5), 32768, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert _mode(tmp_path / "deep.png").startswith("I")
    with pytest.raises(DataError, match="deep.png: I.*16-bit grey.*expected 8 bits per channel") as refused:
        load_rgb(tmp_path / "deep.png")
    assert "cannot decode" not in str(refused.value)  # it was wrapped again as a decoding error


def test_truncated_png_is_a_data_error_naming_the_file(tmp_path, write):
    path = write.png(tmp_path / "render0007.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="render0007.png: cannot decode image"):
        load_rgb(path)


def test_garbage_and_missing_files_are_data_errors(tmp_path):
    (tmp_path / "clean0001.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="clean0001.png"):
        load_rgb(tmp_path / "clean0001.png")
    with pytest.raises(DataError, match="clean0001.png"):
        read_size(tmp_path / "clean0001.png")
    with pytest.raises(DataError, match="missing.png: file not found"):
        load_rgb(tmp_path / "missing.png")


def test_save_then_load_round_trips(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (6, 9, 3), np.uint8)
    path = save_rgb(tmp_path / "sub" / "x.png", rgb)
    assert np.array_equal(load_rgb(path), rgb) and read_size(path) == (6, 9)
    with pytest.raises(DataError, match="H x W x 3 uint8"):
        save_rgb(tmp_path / "y.png", rgb.astype(np.float32))


def test_resize_mask_is_nearest_and_image_is_bilinear():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, 4:] = 3
    small = resize_mask(mask, (3, 5))
    assert small.shape == (3, 5) and set(np.unique(small)) == {0, 3}  # never an in-between class
    assert (small[:, 0] == 0).all() and (small[:, -1] == 3).all()
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:, 4:] = 200
    resized = resize_image(image, (4, 6))
    assert resized.shape == (4, 6, 3)
    assert len(np.unique(resized)) > 2  # bilinear blends the edge
