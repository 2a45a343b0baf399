"""The `cxrsweep` command line: argument parsing and dispatch."""
