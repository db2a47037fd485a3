"""The split schemes, one module each (records, users, time), behind one registry (raycf.data.schemes.registry).
Importing this package registers them all."""

from __future__ import annotations

# isort: off
# the order schemes are listed in (--scheme, errors): the order they register
from raycf.data.schemes import records, users, time
# isort: on
from raycf.data.schemes.registry import SCHEMES, SplitScheme, register, scheme_class, scheme_names

__all__ = ["SCHEMES", "SplitScheme", "records", "register", "scheme_class", "scheme_names", "time", "users"]
