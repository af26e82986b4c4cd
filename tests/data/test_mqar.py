"""MQAR generator: zoology's layout, seeded, and clear errors for impossible shapes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mashup.data.mqar import IGNORE_INDEX, MQARConfig, auto_kv_pairs, gap_distribution, make_mqar
from mashup.errors import MashupError


def check_examples(config: MQARConfig, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    n, length = inputs.shape
    kv, half, context = config.num_kv_pairs, config.vocab_size // 2, config.context_size
    assert inputs.shape == labels.shape == (n, config.seq_len)
    assert inputs.dtype == labels.dtype == torch.long
    assert int(inputs.min()) >= 0 and int(inputs.max()) < config.vocab_size
    for row in range(n):
        keys, values = inputs[row, 0:context:2], inputs[row, 1:context:2]
        assert ((keys >= 1) & (keys < half)).all()
        assert ((values >= half) & (values < config.vocab_size)).all()
        assert len(set(keys.tolist())) == kv and len(set(values.tolist())) == kv
        answer = dict(zip(keys.tolist(), values.tolist(), strict=True))
        where = (labels[row] != IGNORE_INDEX).nonzero().flatten()
        assert len(where) == kv  # every key queried exactly once
        assert int(where.min()) >= context  # queries come after the pairs
        assert ((where - context) % 2 == 0).all()  # on zoology's even query slots
        queried = inputs[row, where].tolist()
        assert sorted(queried) == sorted(answer)
        for position, key in zip(where.tolist(), queried, strict=True):
            assert int(labels[row, position]) == answer[key]


def test_layout_of_the_default_task() -> None:
    config = MQARConfig(seq_len=64, num_kv_pairs=8)
    inputs, labels = make_mqar(config, 50, seed=0)
    check_examples(config, inputs, labels)


@settings(max_examples=25, deadline=None)
@given(
    kv=st.integers(1, 12),
    extra=st.integers(0, 20),
    vocab=st.integers(128, 1024),
    seed=st.integers(0, 2**16),
    random_fill=st.booleans(),
)
def test_every_valid_shape_gives_valid_examples(
    kv: int, extra: int, vocab: int, seed: int, random_fill: bool
) -> None:
    config = MQARConfig(
        vocab_size=vocab,
        seq_len=4 * kv + 2 * extra,
        num_kv_pairs=kv,
        random_non_queries=random_fill,
    )
    inputs, labels = make_mqar(config, 8, seed=seed)
    check_examples(config, inputs, labels)


def test_same_seed_same_data_other_seed_other_data() -> None:
    config = MQARConfig(seq_len=32, num_kv_pairs=4)
    a, la = make_mqar(config, 20, seed=3)
    b, lb = make_mqar(config, 20, seed=3)
    c, _ = make_mqar(config, 20, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)


def test_non_queries_are_zero_unless_randomised() -> None:
    config = MQARConfig(seq_len=64, num_kv_pairs=4, random_non_queries=False)
    inputs, labels = make_mqar(config, 10, seed=0)
    query_region = inputs[:, config.context_size :]
    filler = labels[:, config.context_size :] == IGNORE_INDEX
    assert (query_region[filler] == 0).all()
    randomised, _ = make_mqar(config.model_copy(update={"random_non_queries": True}), 10, seed=0)
    assert (randomised[:, config.context_size :] != 0).float().mean() > 0.9


def test_gaps_follow_the_power_law() -> None:
    # With a = 0.01 the first slot is far likelier than the last one.
    config = MQARConfig(seq_len=256, num_kv_pairs=4)
    _, labels = make_mqar(config, 400, seed=0)
    slots = ((labels != IGNORE_INDEX).nonzero()[:, 1] - config.context_size) // 2
    counts = torch.bincount(slots, minlength=(256 - 8) // 2).float()
    p = torch.from_numpy(gap_distribution((256 - 8) // 2, 0.01))
    assert counts[:10].sum() > counts[-10:].sum() * 3
    assert p[0] > p[-1] * 50


def test_auto_kv_pairs_matches_zoology_grid() -> None:
    assert [auto_kv_pairs(t) for t in (64, 128, 256)] == [4, 8, 16]


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"seq_len": 63}, "seq_len"),
        ({"seq_len": 16, "num_kv_pairs": 5}, "seq_len=16"),
        ({"vocab_size": 32, "seq_len": 64}, "vocab_size"),
        ({"num_kv_pairs": 0}, "num_kv_pairs"),
        ({"power_a": 0.0}, "power_a"),
    ],
)
def test_impossible_shapes_name_the_parameter(kwargs: dict, names: str) -> None:
    with pytest.raises(MashupError, match=names):
        MQARConfig(**kwargs)
