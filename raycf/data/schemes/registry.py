"""The split schemes by name: each scheme module registers its class here, and whatever splits, loads or lists
splits (the data source, the CLI, study files) reads here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from raycf.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from raycf.data.spec import DataSpec
    from raycf.data.split import Split


class SplitScheme:
    """A way to split interactions into train, valid and test: how it splits, what further matrices its splits
    hold, and what a user's input is when ranking each part."""

    name: ClassVar[str]
    help: ClassVar[str]
    """One line on what the scheme holds out (--scheme's help)."""
    spec_fields: ClassVar[tuple[str, ...]] = ()
    """The DataSpec fields (study keys under `data`) that only this scheme reads."""
    extra_parts: ClassVar[tuple[str, ...]] = ()
    """The matrices its splits hold and save beyond train, valid and test, in the order they are hashed."""

    @classmethod
    def split(cls, frame: pd.DataFrame, spec: DataSpec, fractions: tuple[float, float, float], seed: int,
              **manifest: Any) -> Split:
        """Split `frame` by the scheme's own fields of `spec`, and `fractions` and `seed` where it uses them
        (`manifest`: the source, source_sha256 and extra entries of the split's manifest)."""
        raise NotImplementedError

    @classmethod
    def input_parts(cls, part: str) -> tuple[str, ...]:
        """The matrices whose union is every user's input when ranking for `part` (valid, test or score): train."""
        return ("train",)


SchemeClass = TypeVar("SchemeClass", bound=type[SplitScheme])

SCHEMES: dict[str, type[SplitScheme]] = {}
"""Registered schemes in the order they are listed (this package imports them in that order)."""


def register(scheme: SchemeClass) -> SchemeClass:
    """Class decorator: list `scheme` under its `name`."""
    SCHEMES[scheme.name] = scheme
    return scheme


def scheme_names() -> tuple[str, ...]:
    return tuple(SCHEMES)


def scheme_class(name: str, where: str | None = None) -> type[SplitScheme]:
    """The registered scheme `name`; a one-line DataError (after `where`) listing the registered ones otherwise."""
    if name not in SCHEMES:
        prefix = f"{where}: " if where else ""
        raise DataError(f"{prefix}unknown split scheme {name!r}: choose one of {', '.join(SCHEMES)}")
    return SCHEMES[name]
