"""The plain-PyTorch training engines (no Ray here: the sweep wraps them).

    loop          the one epoch driver and batch loop, and the run protocol every training declares
    supervised    one segmentation network trained on one dataset (Table I, M_A)
    runtime/      the device (precision, threads, layouts), checkpoints, prediction
    data/         the arrays a run trains on (segmentation, transfer) and the augmentation recipes
    evaluation/   metrics, scoring on the device, epoch selection, label budget, harm guard
    transfer/     cross-dataset transfer: dispatch, source_only, target training (finetune /
                  scratch), self-training, the outcome, and proposed/ (the method's run, GAN steps,
                  warm-up, diagnostics)
    fused/        several runs of one network trained as one computation (a strategy of the loop)

Submodules are imported by their users so that importing the package stays cheap.
"""
