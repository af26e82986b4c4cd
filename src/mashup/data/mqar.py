"""Multi-query associative recall (MQAR), the synthetic recall task of zoology.

An example of ``seq_len`` tokens starts with ``num_kv_pairs`` key-value pairs
(``k1 v1 k2 v2 ...``), keys drawn from ``[1, vocab/2)`` and values from ``[vocab/2, vocab)``,
distinct within the example. The rest of the sequence queries every key exactly once; the gap
before each query follows zoology's power law ``p(g) ∝ a·g^(a-1)``, so most queries come soon
after the pairs. The label at a query's position is the key's value (the next-token target);
every other label is -100 and ignored by the loss and the accuracy.

The layout, the vocabulary split and the power law follow zoology's ``multiquery_ar``; the random
numbers come from a local ``numpy.random.Generator`` (no global seeding), so a seed gives the same
data here on every run but not the same draws as zoology.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, model_validator

from mashup.errors import MashupError

IGNORE_INDEX = -100


class MQARConfig(BaseModel):
    """Shape of the MQAR task. Invalid combinations raise MashupError naming the parameter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = 8192
    seq_len: int = 64
    num_kv_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = True

    @model_validator(mode="after")
    def _check(self) -> MQARConfig:
        if self.num_kv_pairs < 1:
            raise MashupError(
                f"MQAR: num_kv_pairs must be ≥ 1, got {self.num_kv_pairs}",
                hint="use at least one key-value pair",
            )
        if self.seq_len < 4 or self.seq_len % 2:
            raise MashupError(
                f"MQAR: seq_len must be even and ≥ 4, got {self.seq_len}",
                hint="pick an even sequence length (64, 128, 256, ...)",
            )
        if 4 * self.num_kv_pairs > self.seq_len:
            raise MashupError(
                f"MQAR: seq_len={self.seq_len} is too short for num_kv_pairs="
                f"{self.num_kv_pairs} (pairs and queries need 4 × kv = "
                f"{4 * self.num_kv_pairs} tokens)",
                hint=f"use seq_len ≥ {4 * self.num_kv_pairs} or at most "
                f"{self.seq_len // 4} kv pairs",
            )
        if self.vocab_size <= self.seq_len:
            raise MashupError(
                f"MQAR: vocab_size={self.vocab_size} must exceed seq_len={self.seq_len}",
                hint="use a larger vocabulary (the papers use 8192)",
            )
        if self.num_kv_pairs > self.vocab_size // 2 - 1:
            raise MashupError(
                f"MQAR: vocab_size={self.vocab_size} has only {self.vocab_size // 2 - 1} keys "
                f"for num_kv_pairs={self.num_kv_pairs}",
                hint="raise vocab_size or lower num_kv_pairs",
            )
        if not 0 < self.power_a <= 1:
            raise MashupError(
                f"MQAR: power_a must be in (0, 1], got {self.power_a}",
                hint="0.01 (zoology's default) puts most queries right after the pairs",
            )
        return self

    @property
    def context_size(self) -> int:
        """Tokens taken by the key-value pairs."""
        return 2 * self.num_kv_pairs


def auto_kv_pairs(seq_len: int) -> int:
    """zoology's grid: 64 → 4, 128 → 8, 256 → 16 kv pairs (seq_len / 16, at least 1)."""
    return max(1, seq_len // 16)


def gap_distribution(space: int, power_a: float) -> np.ndarray:
    """p(g) ∝ a·g^(a-1) over g = 1..space, normalised."""
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    return p / p.sum()


def make_mqar(
    config: MQARConfig, num_examples: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)``, LongTensors of shape [num_examples, seq_len]."""
    if num_examples < 1:
        raise MashupError(f"MQAR: num_examples must be ≥ 1, got {num_examples}")
    rng = np.random.default_rng(seed)
    n, kv, length, vocab = num_examples, config.num_kv_pairs, config.seq_len, config.vocab_size
    half = vocab // 2
    context = config.context_size

    keys = np.stack([rng.choice(half - 1, size=kv, replace=False) + 1 for _ in range(n)])
    values = np.stack([rng.choice(vocab - half, size=kv, replace=False) + half for _ in range(n)])

    # Query slots sit at even offsets 2g of the query region, g drawn without replacement.
    space = (length - context) // 2
    p = gap_distribution(space, config.power_a)
    gaps = np.stack([rng.choice(space, size=kv, replace=False, p=p) for _ in range(n)])

    inputs = np.zeros((n, length), dtype=np.int64)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    query_positions = context + 2 * gaps
    np.put_along_axis(inputs, query_positions, keys, axis=1)

    labels = np.full((n, length), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(labels, query_positions, values, axis=1)

    if config.random_non_queries:
        filler = inputs == 0
        inputs[filler] = rng.integers(0, vocab, size=int(filler.sum()))
    return torch.from_numpy(inputs), torch.from_numpy(labels)
