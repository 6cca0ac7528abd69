import numpy as np

from data_pipeline import check_dataset
from tuner.cli import main


def test_a_good_data_set_passes_with_counts_and_balance(tiny_dataset, capsys):
    assert main(["--run-dir", str(tiny_dataset.parent / "runs"), "data", "check", str(tiny_dataset)]) == 0
    out = capsys.readouterr().out
    assert "renders (clean masks): 24 pairs" in out and "class balance: ground" in out and "OK: no problems" in out


def test_problems_are_all_listed_and_exit_1(tiny_dataset, write, capsys):
    (tiny_dataset / "images/clean/clean0002.png").unlink()  # render without mask
    render = tiny_dataset / "images/render/render0003.png"
    render.write_bytes(render.read_bytes()[:100])  # truncated PNG
    write.png(tiny_dataset / "images/clean/clean0004.png", np.full((64, 64, 3), 77, np.uint8))  # unknown colour
    report = check_dataset(tiny_dataset)
    assert not report.ok and len(report.problems) == 3
    assert main(["--run-dir", str(tiny_dataset.parent / "runs"), "data", "check", str(tiny_dataset)]) == 1
    out = capsys.readouterr().out
    assert "render0002.png: render without a mask" in out and "render0003.png: cannot decode" in out
    assert "clean0004.png: 4096 pixels have colours outside the clean palette" in out
    # the way out, for each command (evaluate has no --mask-source: it reads images/ground/ without a clean mask)
    assert "(--mask-source ground in data check, train and tune; evaluate reads it for frames without a clean mask)" in out
    # 23 pairs found, 2 of them unreadable: the count says both (it said "21 pairs", as if that were all)
    assert "renders (clean masks): 21 pairs read cleanly, 2 not" in out
    assert check_dataset(tiny_dataset, allow_missing=True).problems == report.problems[1:]


def test_missing_folder_is_a_problem_not_a_traceback(tmp_path, capsys):
    report = check_dataset(tmp_path / "nowhere")
    assert not report.ok and "data folder not found" in report.problems[0]
    (tmp_path / "notes.md").write_text("x")  # a file is there, it is just not a folder
    assert check_dataset(tmp_path / "notes.md").problems == [f"{tmp_path / 'notes.md'}: not a folder (expected a data "
                                                              f"set folder in the Kaggle layout)"]
    for path, says in ((tmp_path / "nowhere", "no such folder"), (tmp_path / "notes.md", "not a folder")):
        assert main(["--run-dir", str(tmp_path / "runs"), "data", "check", str(path)]) == 1  # one line, no report
        out, err = capsys.readouterr()
        assert out == "" and err.strip() == f"lunartune data: error: {path}: {says}" + (
            " (expected a data set folder in the Kaggle layout)" if says == "not a folder" else "")


def test_too_few_pairs_to_train_on_is_said_but_fine_for_evaluation(tmp_path, write, capsys):
    """Training refuses fewer than 4 frames (an empty split); the check said OK without a word."""
    write.dataset(tmp_path / "three", count=3)
    report = check_dataset(tmp_path / "three")
    assert report.ok and report.renders.notes == ["3 pairs: too few to train on (the train/val/test split needs at "
                                                  "least 4); `lunartune evaluate` scores them"]
    assert check_dataset(write.dataset(tmp_path / "four", count=4)).renders.notes == []


def test_real_photos_are_reported_separately(shared_data):
    report = check_dataset(shared_data / "kaggle-eval-small")
    assert report.ok and report.renders.pairs == 40 and report.real.pairs == 28
    balance = report.real.balance()
    assert balance["large_rocks"] > balance["small_rocks"]  # the documented real-photo balance
    assert "real photos" in report.format()


def test_real_photos_only_folder_is_fine(tmp_path, write):
    write.real_photo(tmp_path, "PCAM1", photo_size=(50, 70), mask_size=(40, 56))
    report = check_dataset(tmp_path)
    assert report.ok and report.real.pairs == 1
    assert any("resized to the mask" in note for note in report.real.notes)


def test_real_mask_colours_no_anti_aliasing_explains_are_reported(tmp_path, write):
    """Real masks decode to the nearest palette colour, so white annotations decoded as sky without a word;
    anti-aliased edges (blends of two palette colours) stay fine."""
    from PIL import Image

    write.real_photo(tmp_path, "PCAM1", photo_size=(40, 56), mask_size=(40, 56))
    mask_path = tmp_path / "real_moon_images" / "g_PCAM1.png"
    rgb = np.array(Image.open(mask_path).convert("RGB"))
    rgb[20, :] = (128, 128, 0)  # an edge between sky and small rocks, anti-aliased
    Image.fromarray(rgb).save(mask_path)
    assert check_dataset(tmp_path).ok and check_dataset(tmp_path).real.notes == []
    rgb[30, :10] = (255, 255, 255)  # 10 pixels of a white label: 0.4 %, worth a note
    Image.fromarray(rgb).save(mask_path)
    report = check_dataset(tmp_path)
    assert report.ok and report.real.notes == [f"{mask_path}: 10 pixels (0.4%) are far from every palette colour "
                                               "(expected black, red, green, blue and their anti-aliased blends); "
                                               "they decode as the nearest class"]
    rgb[31:33, :] = (255, 255, 0)  # and yellow strokes: 5.4 % of the mask in all, a problem
    Image.fromarray(rgb).save(mask_path)
    assert not check_dataset(tmp_path).ok and "122 pixels (5.4%)" in check_dataset(tmp_path).real.problems[0]
