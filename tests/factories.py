"""Tiny generated models, adapters and tokenizers for offline tests."""

from __future__ import annotations

from pathlib import Path

import torch


def make_tokenizer(
    path: Path,
    vocab_size: int = 64,
    extra: str = "",
    *,
    named: tuple[str, ...] = (),
    chat_template: str | None = None,
) -> None:
    """Write a tiny word-level fast tokenizer (tokenizer.json + config) into ``path``: the
    special tokens, then the ``named`` words, then ``w0``, ``w1``, ... up to ``vocab_size``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "<pad>", *named]
    words += [f"w{i}{extra}" for i in range(vocab_size - len(words))]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(path)


LETTER_WORDS = (*"ABCDE", "Answer", ":", ".", "with", "the", "letter", "of", "correct", "choice")
# A chat template in the tiny tokenizer's words; the space before the answer is deliberate.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s>{% endfor %}"
    "{% if add_generation_prompt %}<s> assistant :{% endif %}"
)


def make_tiny_letter_llama(
    path: Path, seed: int = 2, *, vocab_size: int = 64, chat: bool = False
) -> Path:
    """A tiny Llama whose word-level tokenizer knows the letter format's words (answer letters
    A..E, the instruction) besides ``w0``, ``w1``, ...; ``chat`` adds a chat template."""
    make_tiny_llama(path, seed=seed, vocab_size=vocab_size, tokenizer=False)
    named = (*LETTER_WORDS, "user", "assistant") if chat else LETTER_WORDS
    template = TINY_CHAT_TEMPLATE if chat else None
    make_tokenizer(path, vocab_size, named=named, chat_template=template)
    return path


def make_tiny_encoder(path: Path, vocab_size: int = 64) -> Path:
    """A one-layer BERT with the tiny tokenizer: a stand-in for the MiniLM sentence encoder."""
    from transformers import BertConfig, BertModel

    make_tokenizer(path, vocab_size)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertModel(config).save_pretrained(path)
    return path


def make_tiny_gemma3(path: Path, vocab_size: int = 64, sliding_window: int = 3) -> Path:
    """Save a tiny random Gemma3ForCausalLM (BOS prefix, one sliding-window layer) with a
    tokenizer: the second architecture the scorer and trainer must handle."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=64,
    )
    Gemma3ForCausalLM(config).save_pretrained(path)
    make_tokenizer(path, vocab_size)
    return path


def make_tiny_llama(
    path: Path,
    seed: int = 0,
    *,
    vocab_size: int = 64,
    hidden_size: int = 16,
    layers: int = 2,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    tokenizer: bool = True,
    base: Path | None = None,
    noise: float = 0.02,
) -> Path:
    """Save a tiny random LlamaForCausalLM as a Hugging Face directory.

    With ``base``, the model is ``base`` plus Gaussian noise of scale ``noise`` (a fine-tune).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    if base is not None:
        base_model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
        with torch.no_grad():
            for (_, p), (_, q) in zip(
                model.named_parameters(), base_model.named_parameters(), strict=True
            ):
                p.copy_(q + noise * torch.randn_like(q))
    model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    if tokenizer:
        make_tokenizer(path, vocab_size)
    return path


def make_tiny_lora(
    path: Path,
    base: Path,
    seed: int = 0,
    *,
    r: int = 4,
    alpha: int = 8,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    **lora_kwargs,
) -> Path:
    """Save a PEFT LoRA adapter on ``base`` with random (non-zero) A and B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules), **lora_kwargs)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn_like(p))
    peft_model.save_pretrained(path)
    return path
