"""The Ray layer: Ray Tune trainables that wrap the plain-PyTorch engines, the sweep driver,
trial scheduling, progress, search, and `cxrsweep segment`'s Ray runner."""
