"""Language codes as the store keeps them: lower case, subtags joined by `-` (`en`, `pt-br`)."""

from __future__ import annotations

import re
from functools import lru_cache

_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$")


@lru_cache(maxsize=1024)  # a few codes repeat across millions of imported rows
def normalize_language(value: str | None) -> str | None:
    """`en`, `EN_us` → `en`, `en-us`; None stays None; anything else raises ValueError."""
    if value is None or not value.strip():
        return None
    code = value.strip().lower().replace("_", "-")
    if not _LANGUAGE.match(code):
        raise ValueError(f"not a language code: {value!r} (expected e.g. en, de, pt-br)")
    return code
