"""One code path on both sides of transformers' cache rename.

transformers 5.24 renamed the cache argument and output field ``past_key_values`` (Mamba:
``cache_params``) to ``cache``; older 5.x releases know only the old names. These helpers pick
whichever name the installed release (or a given model) uses, so nothing relies on the
deprecation shims that the next major release removes.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from transformers.modeling_outputs import BaseModelOutputWithPast

from mashup.errors import MashupError

#: Newest first: the first one a model's ``forward`` accepts is the one to pass.
CACHE_NAMES: tuple[str, ...] = ("cache", "past_key_values", "cache_params")

#: The cache field of transformers' output dataclasses in the installed release.
OUTPUT_CACHE_FIELD = (
    "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
)


def cache_argument(model: Any) -> str:
    """Name of the keyword through which ``model.forward`` takes its cache."""
    parameters = inspect.signature(model.forward).parameters
    for name in CACHE_NAMES:
        if name in parameters:
            return name
    raise MashupError(
        f"{type(model).__name__}.forward takes none of {', '.join(CACHE_NAMES)}",
        hint="use a model whose forward accepts a cache (a recurrent or causal LM)",
    )


def output_cache(outputs: Mapping[str, Any]) -> Any:
    """The cache a forward returned, whatever the output class calls it (None if none)."""
    for name in CACHE_NAMES:
        if name in outputs:
            return outputs[name]
    return None


def pick_cache(cache: Any, past_key_values: Any, cache_params: Any = None) -> Any:
    """The one cache given under any of its names; two at once is an error."""
    given = [value for value in (cache, past_key_values, cache_params) if value is not None]
    if len(given) > 1:
        raise MashupError(
            "a cache was passed under two names (cache and past_key_values)",
            hint="pass it once, as cache (or past_key_values on transformers < 5.24)",
        )
    return given[0] if given else None
