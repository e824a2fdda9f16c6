"""Field types the study and sweep schemas share, so a seed list is checked the same way in both.

YAML reads ``seeds: [true]`` as a boolean and pydantic's lax mode would turn it into seed 1; ``[42, 42]`` would
run the same trial twice and count it twice in a median. Both are refused where the file says them.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, StrictInt

from recon.core.defaults import MAX_SEED

Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]


def _distinct(seeds: list[int]) -> list[int]:
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seed {', '.join(map(str, repeated))} is listed more than once; each seed runs once")
    return seeds


SeedList = Annotated[list[Seed], AfterValidator(_distinct)]

__all__ = ["Seed", "SeedList"]
