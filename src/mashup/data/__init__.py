"""Multiple-choice datasets, and the real assets (model, benchmarks) fetched through pip."""

from mashup.data.items import (
    MCItem,
    format_choice,
    format_prompt,
    item_from_record,
    item_to_dict,
    iter_items,
    load_items,
    write_items,
)

__all__ = [
    "MCItem",
    "format_choice",
    "format_prompt",
    "item_from_record",
    "item_to_dict",
    "iter_items",
    "load_items",
    "write_items",
]
