"""The Ray layer, and only that: Ray Tune trainables that wrap the plain-PyTorch engines
(`engine/`), the sweep driver, trial scheduling, progress, search, and `cxrsweep segment`'s
Ray Data runner. The layers below never import Ray (docs/ARCHITECTURE.md, "Layers")."""
