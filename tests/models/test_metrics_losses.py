import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import ConfigError, TrainConfig
from models.losses import WEIGHT_MAX, WEIGHT_MIN, DiceLoss, make_loss, median_frequency_weights
from models.metrics import ConfusionMatrix, segmentation_metrics

NAMES = ("ground", "sky", "small_rocks", "large_rocks")
ROCKS = (2, 3)


def _metrics(pred, target):
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor(pred), torch.tensor(target))
    return cm.matrix, segmentation_metrics(cm.matrix, NAMES, ROCKS)


def test_hand_computed_case_with_a_class_absent_from_prediction_and_truth():
    matrix, m = _metrics([0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2])
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert m["iou_ground"] == pytest.approx(1 / 3)  # TP 1, FP 1, FN 1
    assert m["iou_sky"] == pytest.approx(2 / 3)  # TP 2, FP 1
    assert m["iou_small_rocks"] == pytest.approx(1 / 2)  # TP 1, FN 1
    assert math.isnan(m["iou_large_rocks"])  # absent everywhere: excluded, neither 0 nor 1
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["rock_miou"] == pytest.approx(1 / 2)
    assert m["pixel_acc"] == pytest.approx(4 / 6)
    assert m["dice"] == pytest.approx((2 / 4 + 4 / 5 + 2 / 3) / 3)


def test_rock_miou_is_nan_when_no_rock_anywhere():
    _, m = _metrics([0, 1, 1], [0, 1, 0])
    assert math.isnan(m["rock_miou"]) and m["miou"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_a_class_predicted_but_absent_from_truth_scores_zero():
    _, m = _metrics([3, 0], [0, 0])
    assert m["iou_large_rocks"] == 0.0 and m["iou_ground"] == 0.5


def test_split_metric_is_exact_not_a_mean_of_batch_means():
    pred = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0]])
    target = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 1]])
    whole = ConfusionMatrix(4)
    for p, t in zip(pred, target):
        whole.update(p, t)
    one_shot = ConfusionMatrix(4)
    one_shot.update(pred, target)
    assert torch.equal(whole.matrix, one_shot.matrix)
    split = segmentation_metrics(whole.matrix, NAMES, ROCKS)["miou"]
    batch_means = [_metrics(p.tolist(), t.tolist())[1]["miou"] for p, t in zip(pred, target)]
    assert split == pytest.approx((5 / 7 + 1 / 3) / 2)
    assert split != pytest.approx(np.mean(batch_means))


def test_update_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(4).update(torch.zeros(2, 3), torch.zeros(3, 2))


@pytest.mark.parametrize("pred, target, named", [
    ([0, 5], [0, 1], "prediction"),  # 0*4+5 would have counted as (truth 1, predicted 1)
    ([0, 1], [4, 0], "target"),  # would have made 17 bins: a reshape error
    ([0, -1], [0, 1], "prediction"),
])
def test_update_rejects_class_indices_out_of_range_and_counts_nothing(pred, target, named):
    cm = ConfusionMatrix(4)
    with pytest.raises(ValueError, match=rf"{named} class indices must be in \[0, 4\)"):
        cm.update(torch.tensor(pred), torch.tensor(target))
    assert cm.matrix.sum() == 0


def test_median_frequency_weights_are_clipped_and_favour_rare_classes():
    w = median_frequency_weights([0.70, 0.20, 0.05, 0.05])  # median 0.125
    assert w.tolist() == pytest.approx([0.125 / 0.7, 0.125 / 0.2, 2.5, 2.5])
    w = median_frequency_weights([1000, 10, 1, 0])  # counts work too; an absent class gets the maximum
    assert w[0] == pytest.approx(WEIGHT_MIN) and w[3] == WEIGHT_MAX and w[2] == WEIGHT_MAX
    with pytest.raises(ConfigError, match="class_frequencies"):
        median_frequency_weights([0, 0, 0, 0])


def test_losses():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    ce = F.cross_entropy(logits, target)
    assert make_loss(TrainConfig(loss="ce"))(logits, target) == pytest.approx(float(ce))
    # focal with gamma 0 is plain cross-entropy; gamma > 0 down-weights easy pixels
    assert make_loss(TrainConfig(loss="focal", focal_gamma=0.0))(logits, target) == pytest.approx(float(ce), rel=1e-5)
    assert make_loss(TrainConfig(loss="focal"))(logits, target) < ce
    frequencies = [0.5, 0.3, 0.15, 0.05]  # the training split's pixel shares: median 0.225
    weights = torch.tensor([0.45, 0.75, 1.5, 4.5])
    weighted = make_loss(TrainConfig(loss="weighted_ce"), frequencies)(logits, target)
    assert weighted == pytest.approx(float(F.cross_entropy(logits, target, weight=weights)), rel=1e-5)
    assert make_loss(TrainConfig(loss="ce"), frequencies)(logits, target) == pytest.approx(float(ce))
    perfect = F.one_hot(target, 4).permute(0, 3, 1, 2).float() * 50
    assert DiceLoss()(perfect, target) < 1e-3 < DiceLoss()(logits, target)
    both = make_loss(TrainConfig(loss="ce_dice"))(logits, target)
    assert both == pytest.approx(float(ce + DiceLoss()(logits, target)), rel=1e-5)
    with pytest.raises(ConfigError, match="class_frequencies"):
        make_loss(TrainConfig(loss="weighted_ce"))


def test_a_splits_loss_does_not_depend_on_its_batch_size():
    """Weighted CE's batch mean divides by the batch's summed class weights: weighting batches by their pixel
    count gave another val_loss at each (searched) batch size."""
    from models.training import confusion_and_loss

    torch.manual_seed(0)
    logits, masks = torch.randn(4, 4, 6, 6), torch.zeros(4, 6, 6, dtype=torch.long)
    masks[0, :3], masks[1, :1], masks[2, 2:, 2:] = 3, 2, 1
    identity = torch.nn.Identity()
    for loss_fn in (make_loss(TrainConfig(loss="weighted_ce"), [0.76, 0.19, 0.028, 0.023]), make_loss(TrainConfig())):
        whole = float(loss_fn(logits, masks))
        for size in (4, 2, 1):
            batches = [(logits[i:i + size], masks[i:i + size]) for i in range(0, 4, size)]
            assert confusion_and_loss(identity, batches, torch.device("cpu"), loss_fn, 4)[1] == pytest.approx(whole), size


def test_the_worst_images_kept_are_those_the_json_lists_when_scores_tie():
    """On a tie the heap kept the later image while the JSON's stable sort named the earlier one."""
    from types import SimpleNamespace

    from models.evaluation import score_group

    class Ground(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 4, *x.shape[2:])
            out[:, 0] = 1
            return out

    def sample(name):
        mask = np.zeros((8, 8), np.uint8)
        mask[:2], mask[5:, :2] = 1, 3
        return SimpleNamespace(name=name, image=np.zeros((8, 8, 3), np.uint8), mask=mask)

    score = score_group(Ground(), [sample("a"), sample("b"), sample("c")], image_size=(8, 8), mean=(0,) * 3,
                        std=(1,) * 3, device="cpu", class_names=("g", "s", "sr", "lr"), rock_ids=(2, 3), keep_worst=2)
    assert [w.name for w in score.worst] == [n for n, _ in sorted(score.per_image, key=lambda i: i[1])[:2]] == ["a", "b"]


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_focal_gradients_stay_finite_on_pixels_it_is_sure_of(gamma):
    """0 < gamma < 1: at p_true == 1.0 (fp32 rounds a confident pixel there) the gradient was NaN, and the
    weights with it; the loss itself stayed finite, so the run reported "diverged" a step later."""
    logits = torch.zeros(1, 4, 2, 2)
    logits[:, 1] = 200.0  # p(sky) rounds to exactly 1 in fp32
    logits.requires_grad_(True)
    make_loss(TrainConfig(loss="focal", focal_gamma=gamma))(logits, torch.ones(1, 2, 2, dtype=torch.long)).backward()
    assert torch.isfinite(logits.grad).all()
