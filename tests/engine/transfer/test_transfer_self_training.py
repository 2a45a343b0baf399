"""Self-training (engine/transfer/self_training.py): pseudo-labels from a teacher on the unlabelled target
training images only, a student guarded against no adaptation, exact resume."""
import json

import numpy as np
import pytest

from engine.data.transfer import transfer_data
from engine.transfer.dispatch import train_transfer
from engine.transfer.self_training import PseudoLabeller
from models.losses import IGNORE_INDEX
from models.registry import read_segmenter_checkpoint, segmenter_from_checkpoint
from protocol.run_dir import NO_ADAPTATION, TARGET_JACCARD, TARGET_PLAUSIBILITY


def test_pseudo_labels_come_from_the_unlabelled_training_images_only(make_cfg, source, target,
                                                                    trained_segmenter_checkpoint):
    import torch

    cfg = make_cfg(method="self_training", label_fraction=50.0)
    data = transfer_data(cfg, source, target)
    unlabelled = data.target_unlabelled_images
    assert len(unlabelled) == len(data.target_train_images) - data.n_labelled > 0
    # None of them is a labelled image, a validation or a test image.
    for other in (data.target_labelled_images, data.target_val_images, data.target_test_images):
        assert not any(np.array_equal(u, o) for u in unlabelled for o in other)
    teacher = segmenter_from_checkpoint(read_segmenter_checkpoint(trained_segmenter_checkpoint))
    for tta in (False, True):
        labeller = PseudoLabeller(cfg.replace(pseudo_label_keep=0.5, pseudo_label_tta=tta), data, torch.device("cpu"))
        images, masks, record = labeller(teacher)
        assert record["n_candidates"] == len(unlabelled)
        assert record["n_kept"] == len(images) == round(0.5 * len(unlabelled))
        assert all(any(np.array_equal(i, u) for u in unlabelled) for i in images)
        assert masks.shape == images.shape and set(np.unique(masks)) <= {0, 1}


def test_pixels_the_teacher_is_unsure_of_are_left_unlabelled(make_cfg, source, mild_target,
                                                             trained_segmenter_checkpoint):
    import torch

    cfg = make_cfg(method="self_training")
    data = transfer_data(cfg, source, mild_target)
    teacher = segmenter_from_checkpoint(read_segmenter_checkpoint(trained_segmenter_checkpoint))
    every = PseudoLabeller(cfg, data, torch.device("cpu"))(teacher)[1]
    sure = PseudoLabeller(cfg.replace(pseudo_label_confidence=0.95), data, torch.device("cpu"))
    images, masks, _ = sure(teacher)
    probability = sure.probabilities(teacher)
    unsure = np.maximum(probability, 1 - probability) < 0.95
    assert 0 < (masks == IGNORE_INDEX).sum() < masks.size
    # Which unlabelled image each pseudo-label belongs to, found by the image itself.
    kept = [next(i for i, u in enumerate(data.target_unlabelled_images) if np.array_equal(u, image))
            for image in images]
    assert np.array_equal(masks == IGNORE_INDEX, unsure[kept])
    assert np.array_equal(masks[masks != IGNORE_INDEX], every[masks != IGNORE_INDEX])


def test_a_student_on_partly_unlabelled_pseudo_labels_trains_with_the_class_weighted_loss(
        make_cfg, source, mild_target, trained_segmenter_checkpoint, tmp_path):
    """The class weights come from the foreground share of the labelled pixels only: pixels left
    unlabelled (IGNORE_INDEX) count as neither class."""
    cfg = make_cfg(method="self_training", self_training_epochs=1, loss="weighted_ce", pseudo_label_confidence=0.95)
    result = train_transfer(cfg, transfer_data(cfg, source, mild_target), tmp_path / "st", trained_segmenter_checkpoint)
    summary = json.loads((tmp_path / "st" / "result.json").read_text())
    assert summary["pseudo_labels"]["unlabelled_pixel_share"] > 0
    assert result.epochs_trained == 1 and np.isfinite(result.history[0]["train_loss"])


def test_a_student_no_better_than_m_a_falls_back_to_it(make_cfg, source, mild_target, segmenter_checkpoint,
                                                       tmp_path):
    """The strict rule: M_A with random weights, its pseudo-labels and so the student's masks are
    implausible; the run must keep no adaptation and score exactly as source_only does."""
    cfg = make_cfg(method="self_training", self_training_epochs=2, selection="target", guard="strict")
    data = transfer_data(cfg, source, mild_target)
    result = train_transfer(cfg, data, tmp_path / "st", segmenter_checkpoint)
    baseline = train_transfer(make_cfg(method="source_only"), data, tmp_path / "so", segmenter_checkpoint)
    summary = json.loads((tmp_path / "st" / "result.json").read_text())
    assert summary["selection_criterion"] == TARGET_PLAUSIBILITY
    assert summary["pseudo_labels"]["n_candidates"] == len(data.target_train_images)
    if summary["selected_model"] == NO_ADAPTATION:
        assert summary["best_epoch"] == 0
        assert result.test_jaccard_mean == pytest.approx(baseline.test_jaccard_mean)
    else:  # kept only when clearly more plausible than no adaptation
        decision = summary["selection_decision"]
        assert decision["mean_gain"] >= cfg.selection_margin and decision["lower_bound"] > 0


def test_with_target_labels_the_epoch_is_chosen_on_them(make_cfg, source, target, segmenter_checkpoint, tmp_path):
    cfg = make_cfg(method="self_training", label_fraction=50.0, label_budget="paper")
    train_transfer(cfg, transfer_data(cfg, source, target), tmp_path / "st", segmenter_checkpoint)
    summary = json.loads((tmp_path / "st" / "result.json").read_text())
    assert summary["selection_criterion"] == TARGET_JACCARD and summary["val_split"] == "target"
    # M_A as it is is judged against on the same labelled images, by the harm guard.
    decision = summary["selection_decision"]
    assert decision is not None and decision["keep_adaptation"] == (summary["selected_model"] == "adapted")
    # Either no trained epoch beat M_A on those images, or the guard weighed them with the rest.
    assert decision["rule"].startswith("no trained epoch beat M_A by target_val_jaccard") \
        or "labelled" in decision["evidence"]
    assert summary["best_epoch"] == (summary["adapted_epoch"] if decision["keep_adaptation"] else 0)


@pytest.mark.parametrize("teacher", [{}, {"pseudo_label_teacher": "average", "pseudo_label_tta": True,
                                         "pseudo_label_confidence": 0.8}])
def test_self_training_resumes_exactly(teacher, make_cfg, source, mild_target, trained_segmenter_checkpoint, tmp_path):
    cfg = make_cfg(method="self_training", self_training_epochs=3, augmentation="robust", **teacher)
    data = transfer_data(cfg, source, mild_target)
    straight = train_transfer(cfg, data, tmp_path / "straight", trained_segmenter_checkpoint)
    train_transfer(cfg.replace(self_training_epochs=1), data, tmp_path / "resumed", trained_segmenter_checkpoint)
    resumed = train_transfer(cfg, data, tmp_path / "resumed", trained_segmenter_checkpoint)
    assert resumed.epochs_trained == 2
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    assert [h.get("target_score") for h in resumed.history] == [h.get("target_score") for h in straight.history]
    assert resumed.test_jaccard_mean == straight.test_jaccard_mean


@pytest.mark.slow
def test_a_killed_self_training_run_with_a_refreshing_teacher_resumes_to_the_uninterrupted_result(
        make_cfg, source, mild_target, trained_segmenter_checkpoint, tmp_path):
    """SIGKILLed after epoch 1 is on disk: the resumed run relabels with the teacher it had, and ends
    where the run that was never killed ends (the default schedule is deterministic per seed)."""
    import pickle
    import signal
    import subprocess
    import sys

    import torch

    from tests.engine.transfer.test_transfer_runs import KILLED_TRANSFER

    cfg = make_cfg(method="self_training", self_training_epochs=3, checkpoint_every_s=0, augmentation="robust",
                   pseudo_label_teacher="average", pseudo_label_tta=True, pseudo_label_confidence=0.8)
    data = transfer_data(cfg, source, mild_target)
    inputs = tmp_path / "inputs.pkl"
    inputs.write_bytes(pickle.dumps((cfg, data, trained_segmenter_checkpoint, None)))
    killed = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", KILLED_TRANSFER, str(inputs), str(killed), "1"],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    resumed = train_transfer(cfg, data, killed, trained_segmenter_checkpoint)
    straight = train_transfer(cfg, data, tmp_path / "straight", trained_segmenter_checkpoint)
    assert resumed.epochs_trained == 2 and straight.epochs_trained == 3
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    assert resumed.test_jaccard_mean == straight.test_jaccard_mean
    kept = read_segmenter_checkpoint(killed / "best.pt")["state_dict"]
    again = read_segmenter_checkpoint(tmp_path / "straight" / "best.pt")["state_dict"]
    assert all(torch.equal(kept[name], again[name]) for name in again)


def test_the_students_labelled_images_are_repeated_as_fine_tuning_repeats_them(make_cfg, source, target,
                                                                              segmenter_checkpoint, tmp_path):
    """With pseudo_label_repeat_labelled each labelled target image is in the student's training
    set as often as in fine-tuning's; without it, once. The source and pseudo-labelled images are
    the same either way."""
    from engine.transfer.dispatch import transfer_trainer

    def copies(images, of):
        return [sum(np.array_equal(image, one) for image in images) for one in of]

    runs = {}
    for method, repeat in (("self_training", False), ("self_training", True), ("finetune", True)):
        cfg = make_cfg(method=method, label_fraction=10.0, pseudo_label_repeat_labelled=repeat)
        data = transfer_data(cfg, source, target)
        runs[method, repeat] = transfer_trainer(cfg, data, tmp_path / f"{method}-{repeat}", segmenter_checkpoint)
    labelled = data.target_labelled_images
    assert 0 < len(labelled) < len(data.target_train_images)
    once, repeated, finetune = (copies(runs[key].data.train_images, labelled) for key in runs)
    assert once == [1] * len(labelled)
    assert repeated == finetune and sum(repeated) == len(data.target_train_images) and min(repeated) > 1
    others = [len(runs[key].data.train_images) - sum(counts) for key, counts in
              ((("self_training", False), once), (("self_training", True), repeated))]
    assert others[0] == others[1] > 0
