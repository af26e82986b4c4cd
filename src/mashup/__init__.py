"""mashup: reuse what has already been trained.

Pipeline stages, one package each: ``zoo`` (catalog), ``select`` (score zoo entries on a
target), ``merge`` (combine them), ``train`` (fine-tune from the merge), ``eval`` (score a
model), ``models`` (Based / ReBased linear attention), ``states`` (State Soup), ``data``
(assets and datasets) and ``bench`` (benchmarks exposed on the CLI).
"""

from mashup.errors import MashupError

__all__ = ["MashupError", "__version__"]
__version__ = "0.1.0"
