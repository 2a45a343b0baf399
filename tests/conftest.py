"""Settings every test shares: no telemetry, headless plotting, few threads on a 2-core box."""
import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    """Units of work for `pytest -n` (pytest-xdist, `--dist loadgroup --no-loadscope-reorder`): each
    module stays whole on one worker, so its module-scoped fixtures are built once and its tests
    run in order. A worker that runs Ray tests starts its own local runtime (tests/sweep/conftest.py,
    once per worker), so the Ray modules spread over the workers instead of queueing on one.
    Modules with a `slow` test are handed out first (longest first is what keeps one worker from
    running a long module alone at the end); the rest keep their collection order."""
    import pytest

    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)  # stable: order kept within each part
    for item in items:
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
