"""cxrsweep's experiment layer.

`protocol.config` (run configs and profiles), `engine` (plain-PyTorch training engines)
and `protocol.results` (the Parquet schema) never import Ray; only `sweep.trainables` and
`sweep.runner` do.
"""
