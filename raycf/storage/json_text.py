"""JSON as raycf writes it: every missing value (a NaN or infinite float) as null, never as the non-JSON token
`NaN` that other tools refuse."""

from __future__ import annotations

import json
import math
from typing import Any


def json_text(value: Any, indent: int | None = 2) -> str:
    """`value` as JSON text with sorted keys and a final newline; NaN and infinities become null."""
    return json.dumps(without_nan(value), indent=indent, sort_keys=True, allow_nan=False) + "\n"


def without_nan(value: Any) -> Any:
    """`value` with every float that is not finite replaced by None, through dicts, lists and tuples."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(item) for item in value]
    return value
