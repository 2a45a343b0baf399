"""`cxrsweep segment`: a trained checkpoint applied to a folder (or list) of radiographs, with
resumable output. Plain PyTorch; its Ray Data runner is `sweep.segment_ray`."""
