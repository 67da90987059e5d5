"""Shared test settings.

Hypothesis runs with a bounded profile: a fixed number of examples, no shrinking phase, no deadline,
so a failure in CI stays short. Choose another with HYPOTHESIS_PROFILE=dev (more examples, shrinking).
"""
import os
from pathlib import Path

import pytest
from hypothesis import Phase, settings

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    print_blob=True,
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The real images live beside the project (read-only, never copied in). Tests that need them skip
# with this reason when the folder is absent.
SHARED_DATA = Path(os.environ.get("UNIAD_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "bottle").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set UNIAD_DATA to an MVTec-layout folder)")
    return SHARED_DATA
