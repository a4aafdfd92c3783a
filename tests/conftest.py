import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The real GLUE folder from $GLUE_DIR. CI sets it; tests that need it fail loudly without it."""
    value = os.environ.get("GLUE_DIR")
    if not value:
        pytest.fail("GLUE_DIR is not set: point it at a glue_data folder (CI uses ../shared/data/glue)")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"GLUE_DIR={value} is not a directory")
    return path
