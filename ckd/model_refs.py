"""What a model reference (`name_or_path`, `tokenizer`) names, without importing torch: a local folder,
an installed model package (`package:<module>`), the synthetic tokenizer, or a hub repository id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PACKAGE_PREFIX = "package:"
SYNTHETIC_TOKENIZER = "synthetic"


def is_hub_id(reference: Any) -> bool:
    """A reference that names a hub repository: `name` or `owner/name`, not a local path that exists,
    not path-like (./, /, ~), not a model package and not the synthetic tokenizer."""
    if not isinstance(reference, str) or not reference or reference == SYNTHETIC_TOKENIZER:
        return False
    if reference.startswith((PACKAGE_PREFIX, ".", "/", "~")) or Path(reference).expanduser().exists():
        return False
    return reference.count("/") <= 1
