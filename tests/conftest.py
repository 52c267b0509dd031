"""Suite-wide fixtures."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tests run on a 2-core machine next to Docker: keep BLAS and torch single-threaded.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def calculator_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``examples/calculator_env`` installed (no deps) into a folder to put on ``PYTHONPATH``:
    the third-party env a new user would write, registered through its entry point."""
    tmp = tmp_path_factory.mktemp("calculator")
    source = tmp / "src"
    shutil.copytree(ROOT / "examples" / "calculator_env", source)  # builds leave files behind
    target = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return target


@pytest.fixture(scope="session")
def ci_nano() -> Path:
    """The CI nano model warm-started with the CI recipe (seed 0): a loadable HF folder, built
    once per machine (about ten seconds) and cached under the model cache."""
    from agents.nano import CI_CONFIG
    from spo_core.learner.sft import CI_RECIPE, warm_start

    return warm_start(CI_CONFIG, CI_RECIPE, seed=0)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster this process is connected to (2 CPUs, no dashboard, workers' logs
    kept off the terminal), shut down at the end of the session; yields its GCS address. Its
    workers inherit this process's environment, ``PYTHONPATH`` included."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
