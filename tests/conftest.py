"""Settings every test shares: no telemetry, headless plotting, few threads on a 2-core box."""
import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    """Units of work for `pytest -n` (pytest-xdist, `--dist loadgroup`): every test that starts Ray
    runs on one worker, in order, as it would alone (one local runtime at a time on a small box);
    every other module stays whole on one worker, so its module-scoped fixtures are built once."""
    import pytest

    for item in items:
        if item.get_closest_marker("ray") or "/sweep/" in item.nodeid or "[ray" in item.nodeid:
            group = "ray"
        else:
            group = item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
