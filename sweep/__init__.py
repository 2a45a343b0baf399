"""cxrsweep's experiment layer.

`protocol.config` (run configs and profiles), `engine` (plain-PyTorch training engines)
and `protocol.results` (the Parquet schema) never import Ray; only modules of `sweep` do
(`sweep.runner`, `sweep.resources`, `sweep.trainables`, ...; tests/test_layers.py).
"""
