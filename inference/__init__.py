"""`cxrsweep segment`: a trained checkpoint applied to a folder (or list) of radiographs, with
resumable output. Plain PyTorch; its Ray runner is `sweep.segment_ray`, which runs the same stages.
"""
