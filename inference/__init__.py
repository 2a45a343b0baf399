"""`cxrsweep segment`: a trained checkpoint applied to a folder (or list) of radiographs, with
resumable output. Plain PyTorch; its Ray runner is `sweep.segment_ray`, which runs the same stages.

    inputs    the radiographs to segment: `list_inputs` -> `ImageItem`s, `batches`, `item_columns`
    stages    the three batch stages both runners share: `read_batch` (the training preprocessing),
              the network (`checkpoint_info` / `CheckpointInfo`, `Segmenter`, `BatchModel`),
              `encode_batch` (full-frame mask, `mask_statistics`, `quality_flags`, PNG bytes,
              overlays); `segment_batch` runs the three in a row
    output    OUT: `SegmentOutput` (masks/, overlays/, the .parts/ of segmentations.parquet,
              segment.json) and resuming (`SegmentOutput.pending`)
    local     the plain single-process loop (`segment_local`) and the console's `Progress` bar
"""
