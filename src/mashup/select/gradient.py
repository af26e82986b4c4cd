"""The ``gradient`` metric: how much each entry's update lowers the target loss, to first order.

With L the training loss of the target sample at the base weights W, adding an entry's update
ΔW changes it by ⟨∇L(W), ΔW⟩ + O(‖ΔW‖²). The score is the predicted decrease, −⟨∇L(W), ΔW⟩,
summed over the tensors the entry changes (ΔW = B·A·s for a LoRA module, the difference of the
weights for a full checkpoint). The mean of k updates (the ``delta`` merge) is predicted to
change the loss by the mean of their k changes, so the top k by this score are the k entries
whose merge the linearisation predicts to lower the loss most.

One forward and backward pass of the base over the sample serves every candidate, so the cost
does not grow with the zoo beyond reading each candidate's weights (``acc`` and ``nll`` run a
forward pass of every candidate over the sample). The loss is the training objective itself
(:func:`mashup.train.trainer.build_examples`: the gold answer's tokens after the prompt), summed
over the sample's answer tokens and divided by their count.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mashup.data.items import Format, MCItem
from mashup.errors import MashupError

if TYPE_CHECKING:
    import torch


def target_gradient(
    base_path: Path,
    items: list[MCItem],
    parameters: set[str] | None,
    *,
    batch_size: int = 8,
    max_length: int = 256,
    format: Format = "mc",
    bf16: bool = False,
) -> dict[str, torch.Tensor]:
    """∇L at the base weights for the named parameters (every one when None), in float32.

    ``bf16`` runs the forward and backward pass under bf16 autocast, as bf16 training does;
    the weights and their gradients stay float32.
    """
    import torch

    from mashup.eval import load_model
    from mashup.eval.scoring import reads_left_padded
    from mashup.train.trainer import PadCollator, answer_loss, build_examples

    model, tokenizer = load_model(base_path, dtype=torch.float32)
    model.eval()  # no dropout: the gradient of the loss the weights have, not of a noisy one
    named = dict(model.named_parameters())
    wanted = set(named) if parameters is None else parameters
    missing = sorted(wanted - set(named))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MashupError(
            f"base {base_path} has no parameter {missing[0]!r}{more} that a candidate changes",
            hint="select on the base the zoo entries were trained on",
        )
    for name, param in named.items():
        param.requires_grad_(name in wanted)
    examples = build_examples(items, tokenizer, model, max_length, format)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Left-padded, a plain causal LM projects only the answer columns onto the vocabulary, as
    # in training; right-padded, the logits cover every column and the same loss reads them.
    collate = PadCollator(pad_id, left=reads_left_padded(model))
    answer_tokens = sum(sum(label != -100 for label in e["labels"]) for e in examples)
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size])
        labels = batch.pop("labels")
        batch = {key: value.to(device) for key, value in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(**batch)
        # Summed over this batch's answer tokens, divided by the whole sample's: the gradients
        # of the batches add up to that of the sample's mean token loss.
        loss = answer_loss(outputs, labels, num_items_in_batch=max(answer_tokens, 1))
        loss.backward()
    grads = {name: named[name].grad for name in wanted}
    # On the CPU, beside the candidates' weights; a weight the loss does not reach has none.
    return {name: g.float().cpu() for name, g in grads.items() if g is not None}


def adapter_modules(path: Path) -> set[str]:
    """The base parameters (``<module>.weight``) a LoRA adapter changes, from its weights'
    names (the tensors are read, and the adapter checked, when it is scored)."""
    from mashup.merge.io import open_checkpoint
    from mashup.merge.lora import LORA_A

    names = open_checkpoint(path, allow_pickle=False, stem="adapter_model").tensors
    return {_base_weight(name.removesuffix(LORA_A)) for name in names if name.endswith(LORA_A)}


def _base_weight(module: str) -> str:
    """The base parameter a PEFT LoRA module (``base_model.model.<module>``) adds to."""
    from mashup.merge.lora import PEFT_PREFIX

    return module.removeprefix(PEFT_PREFIX) + ".weight"


def adapter_decrease(entry: Any, grads: dict[str, torch.Tensor]) -> float:
    """−⟨∇L, ΔW⟩ of a LoRA adapter entry, ΔW = B·A·s per module."""
    from mashup.merge.engine import Input
    from mashup.merge.lora import read_adapter

    adapter = read_adapter(Input(entry.name, Path(entry.path)), allow_pickle=False)
    fan_in_fan_out = bool(adapter.config.get("fan_in_fan_out", False))
    total = 0.0
    for module in adapter.a:
        grad = grads.get(_base_weight(module))
        if grad is None:
            continue  # a module the target's loss does not reach: no first-order change
        a, b = adapter.a[module].float(), adapter.b[module].float()
        if fan_in_fan_out:  # Conv1D stores the weight transposed: ΔW is (B·A)ᵀ
            grad = grad.T
        # ⟨G, B·A⟩ = Σ (Bᵀ·G) ⊙ A: an r × in product instead of the out × in update.
        total += float(((b.T @ grad) * a).sum()) * adapter.scale
    return -total


def checkpoint_decreases(
    entries: list[Any], grads: dict[str, torch.Tensor], base_path: Path
) -> dict[str, float]:
    """−⟨∇L, W_entry − W_base⟩ of full-checkpoint entries, streamed weight by weight: each base
    tensor is read once for all of them."""
    import torch

    from mashup.merge.io import open_checkpoint

    base_weights = open_checkpoint(base_path, allow_pickle=False)
    checkpoints = {e.name: open_checkpoint(Path(e.path), allow_pickle=False) for e in entries}
    totals = dict.fromkeys(checkpoints, 0.0)
    for name, grad in grads.items():
        if name not in base_weights.tensors:
            continue  # a tied weight stored once: its gradient is counted under the other name
        base = None
        for entry_name, weights in checkpoints.items():
            if name not in weights.tensors:
                continue
            shape = list(weights.tensors[name].shape)
            if shape != list(grad.shape):
                raise MashupError(
                    f"{entry_name}: {name} is {shape}, the base's {list(grad.shape)}",
                    hint="select on the base the zoo entries were trained on",
                )
            base = base_weights.read(name).float() if base is None else base
            update = weights.read(name).float() - base
            totals[entry_name] += float(torch.sum(update * grad))
    return {entry_name: -total for entry_name, total in totals.items()}


def gradient_scores(
    entries: list[Any],
    base_path: Path,
    items: list[MCItem],
    *,
    batch_size: int = 8,
    format: Format = "mc",
    bf16: bool = False,
    console: Any = None,
) -> dict[str, float]:
    """The predicted loss decrease of every entry on ``items`` (higher ranks first)."""
    wanted: set[str] | None = set()
    for entry in entries:
        if entry.kind != "adapter":
            wanted = None  # a full checkpoint may change any weight
            break
        wanted |= adapter_modules(Path(entry.path))
    if console is not None:
        console.print(
            f"gradient of the target loss on {len(items)} items at the base "
            f"({'every weight' if wanted is None else f'{len(wanted)} weights'})"
        )
    grads = target_gradient(
        base_path, items, wanted, batch_size=batch_size, format=format, bf16=bf16
    )
    full = [e for e in entries if e.kind != "adapter"]
    scores = checkpoint_decreases(full, grads, base_path) if full else {}
    for entry in entries:
        if entry.kind == "adapter":
            scores[entry.name] = adapter_decrease(entry, grads)
        if console is not None:
            console.print(f"  {entry.name}: predicted loss decrease {scores[entry.name]:.5f}")
    return scores
