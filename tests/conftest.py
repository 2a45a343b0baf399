"""Settings every test shares: no telemetry, headless plotting, few threads on a 2-core box; and the
phantom folders the engine, command and inference tests read."""
import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# No idle Python workers started ahead of demand: trials run in actors, which Ray starts in
# workers of their own, so the prestarted ones (each importing Ray) only cost CPU on 2 cores.
os.environ.setdefault("RAY_enable_worker_prestart", "0")
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")


def pytest_collection_modifyitems(config, items):
    """Units of work for `pytest -n` (pytest-xdist, `--dist loadgroup`): each module stays whole on
    one worker, so its module-scoped fixtures are built once and its tests run in order. A worker
    that runs Ray tests starts its own local runtime (tests/sweep/conftest.py, once per worker),
    so the Ray modules spread over both workers instead of queueing on one. (Handing the slow
    modules out first made the two workers run Ray tests at the same time: 639 s, against 615 s
    in xdist's own order.)"""
    for item in items:
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.fixture(scope="session")
def phantom_folders(tmp_path_factory) -> dict:
    """Ten JSRT + SCR phantoms in the original formats (two per cross-validation fold), and a cache folder."""
    from data_io.phantoms import synthesize

    root = tmp_path_factory.mktemp("engine-phantoms")
    folders = synthesize(root / "data", n_source=10, n_target=0, source_size=128, seed=11)
    return {**folders, "cache": root / "cache"}
