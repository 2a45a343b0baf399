"""The segmentation losses' names, light to import (no torch): protocol.config checks
`RunConfig.loss` against them before anything trains; models/losses.py builds each."""

# "ce" is the paper's cross-entropy; "weighted_ce" and "ce_dice" are options for very unbalanced
# structures (models/losses.py).
LOSSES = ("ce", "weighted_ce", "ce_dice")
