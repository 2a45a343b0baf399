"""cxrsweep's experiment layer.

`sweep.config` (run configs and profiles), `sweep.engine` (plain-PyTorch training engines)
and `sweep.results` (the Parquet schema) never import Ray; only `sweep.trainables` and
`sweep.runner` do.
"""
