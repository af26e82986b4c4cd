"""Models load as plain PyTorch code: no hub kernels, even where `kernels` is another version."""

from __future__ import annotations

from pathlib import Path

import pytest

from mashup.errors import MashupError
from tests.factories import make_tiny_llama


def test_models_load_without_hub_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.modeling_utils as modeling_utils

    from mashup.eval import load_model

    base = make_tiny_llama(tmp_path / "base", seed=0)
    # A machine whose `kernels` package is of an incompatible version.
    monkeypatch.setattr(modeling_utils, "is_kernels_available", lambda *a, **k: False)
    monkeypatch.setenv("USE_HUB_KERNELS", "YES")  # what transformers assumes when unset
    with pytest.raises(MashupError, match="Kernels are not available"):
        load_model(base)
    monkeypatch.delenv("USE_HUB_KERNELS")
    model, _ = load_model(base)
    assert not model.use_kernels
    # A user who asks for hub kernels keeps the choice.
    monkeypatch.setenv("USE_HUB_KERNELS", "YES")
    with pytest.raises(MashupError, match="Kernels are not available"):
        load_model(base)
