"""Multiple-choice scoring the way lm-evaluation-harness does it, plus letter-answer accuracy.

``mc`` format (lm-eval's ``multiple_choice`` output type): the model reads the prompt
(:func:`mashup.data.format_prompt`, ``Question: ...\\nAnswer:``) and each choice is scored by the
summed log-likelihood of its continuation (``" " + choice``). ``acc`` picks the choice with the
highest log-likelihood, ``acc_norm`` the highest log-likelihood per character of the choice.
Prompt and continuation are tokenised as lm-eval's ``HFLM`` does: the continuation's tokens are
those of ``prompt + continuation`` past the prompt's own tokens, without special tokens.

``letter`` format (the Mashup paper's): the prompt lists the choices as ``A. ...``, ``B. ...``
inside the tokenizer's chat template, and the model's next-token log-probabilities of the
letters decide.

The prompt of an item is read once: a forward over the items' prompts (left-padded, with
explicit positions) fills a key/value cache, which is copied to every choice, and a second
forward reads only the continuations. Its log-likelihoods equal reading each prompt + choice
whole (tested to 1e-4); it costs the prompt's tokens once per item instead of once per choice.
Models without a plain key/value cache (recurrent models, a model behind a state) and rows
that need left truncation read every prompt + choice whole instead, all choices of an item in
one batched forward (right-padded, so every real token keeps its position). Either way several
items share a forward up to ``batch_size`` rows.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mashup.data.items import Format, MCItem, format_choice, format_prompt
from mashup.errors import MashupError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class ItemScore:
    """How the model scored one item."""

    id: str | None
    answer: int
    loglikelihoods: list[float]
    n_chars: list[int]
    pred: int
    pred_norm: int
    gold_tokens: int

    @property
    def correct(self) -> bool:
        return self.pred == self.answer

    @property
    def correct_norm(self) -> bool:
        return self.pred_norm == self.answer


@dataclass
class EvalResult:
    """Accuracy over ``n`` items; ``nll`` is the gold answer's mean negative log-likelihood
    per token (letter format: per letter)."""

    acc: float
    acc_norm: float
    n: int
    nll: float
    per_item: list[ItemScore] = field(default_factory=list, repr=False)
    format: str = "mc"

    def ci95(self, metric: str = "acc") -> tuple[float, float]:
        """Wilson 95 % interval of ``acc`` or ``acc_norm``."""
        return wilson_interval(getattr(self, metric), self.n)

    def summary(self) -> dict[str, Any]:
        """The numbers as a flat dict, for JSON output and catalogs."""
        acc_lo, acc_hi = self.ci95("acc")
        norm_lo, norm_hi = self.ci95("acc_norm")
        return {
            "format": self.format,
            "n": self.n,
            "acc": self.acc,
            "acc_ci95": [acc_lo, acc_hi],
            "acc_norm": self.acc_norm,
            "acc_norm_ci95": [norm_lo, norm_hi],
            "nll": self.nll,
        }


def wilson_interval(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` measured on ``n`` trials."""
    if n == 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


# --- loading ----------------------------------------------------------------------------------


def _register_project_models() -> None:
    """Importing mashup.models registers the linear-attention models with the Auto classes."""
    with contextlib.suppress(ImportError):
        import mashup.models  # noqa: F401


def _load_tokenizer(*candidates: Path | str):
    from transformers import AutoTokenizer

    for candidate in candidates:
        try:
            return AutoTokenizer.from_pretrained(str(candidate))
        except (OSError, ValueError, TypeError, KeyError):
            continue  # try the next place a tokenizer may live
    raise MashupError(
        f"no tokenizer found in {' or '.join(str(c) for c in candidates)}",
        hint="save the tokenizer next to the model (tokenizer.save_pretrained(dir))",
    )


def load_model(
    path: Path | str,
    base: Path | str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a model dir, a PEFT adapter dir, or base + adapter.

    For an adapter, the base comes from ``base`` or else the adapter's
    ``base_model_name_or_path``; the adapter stays unmerged (a ``PeftModel``). The model is
    placed on ``device``, by default the accelerator if there is one (see ``mashup.devices``).
    """
    from transformers import AutoModelForCausalLM

    from mashup.devices import model_device
    from mashup.hub import stay_offline

    stay_offline()
    target = device if device is not None else model_device()  # a bad name fails first
    _register_project_models()
    path = Path(path)
    if not path.exists():
        raise MashupError(
            f"{path}: no such model directory",
            hint="give a Hugging Face model folder or a PEFT adapter folder",
        )
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel

        try:
            base_name = base or json.loads(adapter_config.read_text()).get(
                "base_model_name_or_path"
            )
        except json.JSONDecodeError as exc:
            raise MashupError(f"{adapter_config}: bad JSON ({exc.msg})") from exc
        if not base_name:
            raise MashupError(
                f"{path}: adapter does not name its base model",
                hint="pass the base model with --base",
            )
        base_path = Path(base_name)
        if not (base_path / "config.json").is_file():
            raise MashupError(
                f"{path}: base model {base_name} is not a local model folder",
                hint="pass the base model folder with --base",
            )
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
        model = PeftModel.from_pretrained(model, path)
        has_tokenizer = (path / "tokenizer_config.json").is_file()
        tokenizer = _load_tokenizer(*((path, base_path) if has_tokenizer else (base_path,)))
    elif (path / "config.json").is_file():
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise MashupError(
                f"{path}: cannot load the model ({exc})",
                hint="is it a complete Hugging Face causal-LM folder?",
            ) from exc
        tokenizer = _load_tokenizer(*((path, base) if base else (path,)))
    else:
        raise MashupError(
            f"{path}: neither config.json nor adapter_config.json found",
            hint="give a Hugging Face model folder or a PEFT adapter folder",
        )
    model.to(target)
    model.eval()
    return model, tokenizer


# --- tokenising -------------------------------------------------------------------------------


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prefix_tokens(model: Any, tokenizer: Any) -> list[int]:
    """lm-eval adds BOS only for models trained to expect it (Gemma); so do we."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    if model_type.startswith("gemma") and tokenizer.bos_token_id is not None:
        return [tokenizer.bos_token_id]
    return []


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` as lm-eval's HFLM splits them.

    Trailing spaces of the context move to the continuation, and the continuation's tokens are
    the tail of the jointly tokenised text, so merges across the boundary are not lost.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation)
    context_ids = _encode(tokenizer, context)
    return context_ids, whole[len(context_ids) :]


def _max_length(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _accepts_logits_to_keep(model: Any) -> bool:
    try:
        params = inspect.signature(
            model.get_base_model().forward if hasattr(model, "get_base_model") else model.forward
        ).parameters
    except (TypeError, ValueError):
        return False
    return "logits_to_keep" in params


def _pad(
    rows: Sequence[list[int]], pad_id: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token rows padded to one width, on the right (every
    token keeps its position) or on the left (every row ends in the last column)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, span] = 1
    return input_ids, attention_mask


@contextlib.contextmanager
def _contiguous_head_input(model: Any) -> Any:
    """Hands the output projection a contiguous input while the block runs.

    With ``logits_to_keep`` the model projects a slice of its hidden states (every row's last
    positions), a strided view. On a CPU, a bf16 projection of such a view took about 200
    times as long as of a contiguous copy of it (Gemma-3-270M's 262k-token vocabulary: 13 s
    against 0.06 s for 8 rows); copying the few kept rows costs next to nothing.
    """
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, torch.nn.Module):
        yield
        return
    handle = head.register_forward_pre_hook(
        lambda _module, args: tuple(a.contiguous() if torch.is_tensor(a) else a for a in args)
    )
    try:
        yield
    finally:
        handle.remove()


def _forward_logprobs(
    model: Any, rows: Sequence[list[int]], first_scored: int, pad_id: int
) -> tuple[torch.Tensor, int]:
    """Log-softmax over the vocabulary at positions ``>= first_scored - 1`` of right-padded rows.

    Returns ``(logprobs [B, K, V], offset)`` where ``logprobs[b, j]`` predicts the token at
    position ``offset + j + 1``. Only the last K positions are projected to the vocabulary
    when the model supports ``logits_to_keep``, which saves most of the memory and time.
    """
    device = _device(model)
    input_ids, attention_mask = _pad(rows, pad_id)
    width = input_ids.shape[1]
    keep = width - max(first_scored - 1, 0)
    kwargs: dict[str, Any] = {}
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    with torch.inference_mode(), _contiguous_head_input(model):
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            use_cache=False,
            **kwargs,
        )
    logits = out.logits if hasattr(out, "logits") else out[0]
    logits = logits[:, -keep:, :] if logits.shape[1] >= keep else logits
    offset = width - logits.shape[1]
    return torch.log_softmax(logits.float(), dim=-1), offset


def _cache_keyword(model: Any) -> str | None:
    """The keyword through which a plain transformers causal LM takes its key/value cache, or
    None where the prompt cannot be shared (recurrent or wrapped models, no position ids)."""
    from transformers import PreTrainedModel

    from mashup.models.hf_cache import CACHE_NAMES

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(inner, PreTrainedModel) or getattr(inner, "_is_stateful", False):
        return None
    if str(getattr(inner.config, "model_type", "")).startswith("mashup"):
        return None  # mashup's linear-attention models carry a recurrent state
    try:
        parameters = inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return None
    if "position_ids" not in parameters:
        return None
    return next((name for name in CACHE_NAMES[:2] if name in parameters), None)


def reads_left_padded(model: Any) -> bool:
    """Whether ``model`` computes left-padded rows with explicit positions as it does the same
    rows right-padded, and can project only its last positions onto the vocabulary: a plain
    transformers causal LM (position ids, ``logits_to_keep``), not a recurrent one."""
    return _cache_keyword(model) is not None and _accepts_logits_to_keep(model)


def _is_plain_kv_cache(cache: Any) -> bool:
    """A DynamicCache of full or sliding-window key/value layers only (rows can be copied)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    return isinstance(cache, DynamicCache) and all(
        type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers
    )


def _shared_prompt_scores(
    model: Any,
    cache_keyword: str,
    requests: Sequence[list[tuple[list[int], list[int]]]],
    pad_id: int,
) -> list[list[float]] | None:
    """Per item, per choice: log-likelihood of the continuation, each prompt read once.

    Pass 1 reads the prompts left-padded (positions counted from each row's first real
    token) and keeps the cache; its last position predicts every choice's first token.
    Pass 2 copies each item's cache row to its choices and reads the right-padded
    continuations. Returns None if the model's cache turns out not to be a plain one.
    """
    from mashup.models.hf_cache import output_cache

    device = _device(model)
    prompts = [item[0][0] for item in requests]
    prompt_ids, prompt_mask = _pad(prompts, pad_id, left=True)
    prompt_positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    keep_last: dict[str, Any] = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    with torch.inference_mode(), _contiguous_head_input(model):
        out = model(
            input_ids=prompt_ids.to(device),
            attention_mask=prompt_mask.to(device),
            position_ids=prompt_positions.to(device),
            use_cache=True,
            **keep_last,
        )
        cache = output_cache(out)
        if not _is_plain_kv_cache(cache):
            return None
        first_logprobs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)

        owner = [i for i, item in enumerate(requests) for _ in item]
        continuations = [continuation for item in requests for _, continuation in item]
        cont_ids, cont_mask = _pad(continuations, pad_id)
        cont_width = cont_ids.shape[1]
        owner_index = torch.tensor(owner, dtype=torch.long)
        cache.batch_select_indices(owner_index.to(device))
        prompt_lengths = torch.tensor([len(prompts[i]) for i in owner], dtype=torch.long)
        cont_positions = prompt_lengths[:, None] + torch.arange(cont_width)[None, :]
        scores_by_row: list[float] = []
        if cont_width > 1:
            out = model(
                input_ids=cont_ids[:, :-1].to(device),
                attention_mask=torch.cat([prompt_mask[owner_index], cont_mask[:, :-1]], 1).to(
                    device
                ),
                position_ids=cont_positions[:, :-1].to(device),
                use_cache=True,
                **{cache_keyword: cache},
            )
            later_logprobs = torch.log_softmax(out.logits.float(), dim=-1)
        for r, continuation in enumerate(continuations):
            total = float(first_logprobs[owner[r], continuation[0]])
            if len(continuation) > 1:
                targets = torch.tensor(continuation[1:], dtype=torch.long, device=device)
                picked = later_logprobs[r, : len(continuation) - 1, :].gather(-1, targets[:, None])
                total += float(picked.sum())
            scores_by_row.append(total)
    scores: list[list[float]] = [[] for _ in requests]
    for r, i in enumerate(owner):
        scores[i].append(scores_by_row[r])
    return scores


# --- mc scoring -------------------------------------------------------------------------------


def _mc_requests(model: Any, tokenizer: Any, item: MCItem) -> list[tuple[list[int], list[int]]]:
    prefix = prefix_tokens(model, tokenizer)
    prompt = format_prompt(item)
    requests = []
    for choice in item.choices:
        context_ids, continuation_ids = encode_pair(tokenizer, prompt, format_choice(choice))
        if not continuation_ids:
            raise MashupError(
                f"item {item.id or item.question[:40]!r}: choice {choice!r} tokenises to nothing"
            )
        requests.append((prefix + context_ids, continuation_ids))
    return requests


def _shares_one_prompt(requests: list[tuple[list[int], list[int]]], max_length: int | None) -> bool:
    """All choices continue the same prompt tokens and no row needs left truncation."""
    prompt = requests[0][0]
    return all(
        context == prompt and (max_length is None or len(context) + len(cont) <= max_length)
        for context, cont in requests
    )


def _batches(sizes: Sequence[int], batch_size: int) -> list[list[int]]:
    """Group item indices so a forward holds whole items and at most ``batch_size`` rows
    (or one item, if it alone has more choices than that)."""
    groups: list[list[int]] = []
    current: list[int] = []
    rows = 0
    for index, size in enumerate(sizes):
        if current and rows + size > batch_size:
            groups.append(current)
            current, rows = [], 0
        current.append(index)
        rows += size
    if current:
        groups.append(current)
    return groups


def score_choices(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCItem],
    batch_size: int = 8,
    progress: Any = None,
    *,
    share_prompt: bool = True,
) -> list[list[float]]:
    """Per item, per choice: summed log-likelihood of the choice's continuation.

    ``share_prompt=False`` reads every prompt + choice whole even where the prompt could be
    read once (the same scores, slower: for tests and benchmarks).
    """
    scored = _score_choices_with_lengths(
        model, tokenizer, items, batch_size, progress, share_prompt=share_prompt
    )
    return [s for s, _ in scored]


def _score_choices_with_lengths(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCItem],
    batch_size: int,
    progress: Any = None,
    *,
    share_prompt: bool = True,
) -> list[tuple[list[float], list[int]]]:
    max_length = _max_length(model)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    all_requests = [_mc_requests(model, tokenizer, item) for item in items]
    # Similar lengths share a forward, which wastes less on padding; results keep item order.
    order = sorted(
        range(len(items)), key=lambda i: -max(len(c) + len(t) for c, t in all_requests[i])
    )
    results: list[tuple[list[float], list[int]] | None] = [None] * len(items)
    sizes = [len(all_requests[i]) for i in order]
    cache_keyword = _cache_keyword(model) if share_prompt else None
    for group in _batches(sizes, max(1, batch_size)):
        indices = [order[g] for g in group]
        shareable = cache_keyword is not None and all(
            _shares_one_prompt(all_requests[i], max_length) for i in indices
        )
        if shareable:
            shared = _shared_prompt_scores(
                model, cache_keyword, [all_requests[i] for i in indices], pad_id
            )
            if shared is None:
                cache_keyword = None  # not a plain key/value cache: read rows whole from now on
            else:
                for index, scores in zip(indices, shared, strict=True):
                    results[index] = (scores, [len(c) for _, c in all_requests[index]])
                    if progress is not None:
                        progress()
                continue
        rows: list[list[int]] = []
        spans: list[tuple[int, int]] = []  # (first continuation position, length) per row
        for index in (order[g] for g in group):
            for context_ids, continuation_ids in all_requests[index]:
                row = context_ids + continuation_ids
                if max_length is not None and len(row) > max_length:
                    row = row[-max_length:]  # lm-eval truncates the context from the left
                rows.append(row)
                spans.append((len(row) - len(continuation_ids), len(continuation_ids)))
        first_scored = min(start for start, _ in spans)
        logprobs, offset = _forward_logprobs(model, rows, first_scored, pad_id)
        row_index = 0
        for index in (order[g] for g in group):
            scores, lengths = [], []
            for _ in all_requests[index]:
                start, length = spans[row_index]
                targets = torch.tensor(rows[row_index][start : start + length], dtype=torch.long)
                # logprobs[:, j] predicts position offset + j + 1.
                positions = torch.arange(start - 1, start + length - 1) - offset
                picked = logprobs[row_index, positions, :].gather(
                    -1, targets[:, None].to(logprobs.device)
                )
                scores.append(float(picked.sum()))
                lengths.append(length)
                row_index += 1
            results[index] = (scores, lengths)
            if progress is not None:
                progress()
    return [r for r in results if r is not None]


def _argmax(values: Sequence[float]) -> int:
    """Index of the largest value, the first one on ties (as numpy's argmax)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _evaluate_mc(
    model: Any, tokenizer: Any, items: Sequence[MCItem], batch_size: int, progress: Any
) -> EvalResult:
    scored = _score_choices_with_lengths(model, tokenizer, items, batch_size, progress)
    per_item = []
    gold_nll = 0.0
    gold_tokens = 0
    for item, (scores, lengths) in zip(items, scored, strict=True):
        n_chars = [len(c) for c in item.choices]  # lm-eval normalises by len(choice) as written
        per_char = [s / max(n, 1) for s, n in zip(scores, n_chars, strict=True)]
        per_item.append(
            ItemScore(
                id=item.id,
                answer=item.answer,
                loglikelihoods=scores,
                n_chars=n_chars,
                pred=_argmax(scores),
                pred_norm=_argmax(per_char),
                gold_tokens=lengths[item.answer],
            )
        )
        gold_nll -= scores[item.answer]
        gold_tokens += lengths[item.answer]
    n = len(per_item)
    return EvalResult(
        acc=sum(s.correct for s in per_item) / n,
        acc_norm=sum(s.correct_norm for s in per_item) / n,
        n=n,
        nll=gold_nll / max(gold_tokens, 1),
        per_item=per_item,
        format="mc",
    )


# --- letter scoring ---------------------------------------------------------------------------


def letter_content(item: MCItem) -> str:
    """The question with lettered choices: the user message of the letter format."""
    if len(item.choices) > len(LETTERS):
        raise MashupError(f"letter format supports at most {len(LETTERS)} choices")
    lines = [item.context, ""] if item.context else []
    lines.append(item.question)
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(item.choices)]
    lines.append("Answer with the letter of the correct choice.")
    return "\n".join(lines)


def letter_prompt(item: MCItem, tokenizer: Any) -> str:
    """The paper's chat-format question: lettered choices, answer with the letter."""
    content = letter_content(item)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        return str(text)
    return f"{content}\nAnswer:"


def letter_context_ids(model: Any, tokenizer: Any, item: MCItem) -> list[int]:
    """Token ids the model reads before answering (a chat template brings its own BOS)."""
    prefix = [] if getattr(tokenizer, "chat_template", None) else prefix_tokens(model, tokenizer)
    return prefix + _encode(tokenizer, letter_prompt(item, tokenizer))


def letter_answer_ids(tokenizer: Any, item: MCItem) -> list[int]:
    """The gold answer as training targets: the letter token the evaluator reads, then the
    rest of the assistant turn as the chat template writes it (its end-of-turn tokens)."""
    ids = [letter_token_ids(tokenizer, len(item.choices))[item.answer]]
    if not getattr(tokenizer, "chat_template", None):
        return ids
    letter = LETTERS[item.answer]
    prompt = letter_prompt(item, tokenizer)
    messages = [
        {"role": "user", "content": letter_content(item)},
        {"role": "assistant", "content": letter},
    ]
    whole = str(tokenizer.apply_chat_template(messages, tokenize=False))
    # The template may put a space before the answer; the evaluator reads the letter's token.
    turn = whole[len(prompt) :].lstrip() if whole.startswith(prompt) else ""
    if turn.startswith(letter) and turn[len(letter) :]:
        ids += _encode(tokenizer, turn[len(letter) :])
    return ids


def letter_token_ids(tokenizer: Any, n: int) -> list[int]:
    """The single token each of the first ``n`` letters starts the answer with."""
    ids = []
    for letter in LETTERS[:n]:
        encoded = _encode(tokenizer, letter)
        if not encoded:
            raise MashupError(f"the tokenizer cannot encode the letter {letter!r}")
        ids.append(encoded[0])
    if len(set(ids)) != len(ids) or (
        tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids
    ):
        raise MashupError(
            "the tokenizer does not give the answer letters distinct tokens",
            hint="use --format mc for this model",
        )
    return ids


def _evaluate_letter(
    model: Any, tokenizer: Any, items: Sequence[MCItem], batch_size: int, progress: Any
) -> EvalResult:
    if any(len(item.choices) > len(LETTERS) for item in items):
        raise MashupError(f"letter format supports at most {len(LETTERS)} choices")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    max_length = _max_length(model)
    rows_all = []
    for item in items:
        row = letter_context_ids(model, tokenizer, item)
        if max_length is not None and len(row) > max_length:
            row = row[-max_length:]
        rows_all.append(row)
    per_item: list[ItemScore] = []
    gold_nll = 0.0
    for start in range(0, len(items), max(1, batch_size)):
        chunk = list(range(start, min(start + batch_size, len(items))))
        rows = [rows_all[i] for i in chunk]
        logprobs_all, offset = _forward_logprobs(model, rows, min(len(r) for r in rows), pad_id)
        for j, i in enumerate(chunk):
            item = items[i]
            logprobs = logprobs_all[j, len(rows[j]) - 1 - offset]
            letters = letter_token_ids(tokenizer, len(item.choices))
            scores = [float(logprobs[t]) for t in letters]
            pred = _argmax(scores)
            per_item.append(
                ItemScore(
                    id=item.id,
                    answer=item.answer,
                    loglikelihoods=scores,
                    n_chars=[1] * len(scores),
                    pred=pred,
                    pred_norm=pred,
                    gold_tokens=1,
                )
            )
            gold_nll -= scores[item.answer]
            if progress is not None:
                progress()
    n = len(per_item)
    acc = sum(s.correct for s in per_item) / n
    return EvalResult(
        acc=acc, acc_norm=acc, n=n, nll=gold_nll / n, per_item=per_item, format="letter"
    )


def evaluate_items(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCItem],
    *,
    format: Format = "mc",
    batch_size: int = 8,
    progress: Any = None,
) -> EvalResult:
    """acc, acc_norm and gold NLL of ``model`` on ``items``.

    ``progress`` is called once per scored item (e.g. to advance a progress bar).
    """
    if not items:
        raise MashupError("no items to evaluate")
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        if format == "mc":
            return _evaluate_mc(model, tokenizer, items, batch_size, progress)
        if format == "letter":
            return _evaluate_letter(model, tokenizer, items, batch_size, progress)
        raise MashupError(f"unknown format {format!r}", hint="use 'mc' or 'letter'")
    finally:
        if was_training:
            model.train()
