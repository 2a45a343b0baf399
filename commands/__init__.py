"""The `cxrsweep` command line: argument parsing and dispatch, the top layer (it may import every
other package; nothing imports it)."""
