"""Based / ReBased causal language models as transformers classes.

``LinearAttnConfig`` (model_type ``mashup_linear_attn``) describes a stack of pre-norm blocks,
one mixer per layer; ``LinearAttnForCausalLM`` is a ``PreTrainedModel`` + ``GenerationMixin``
whose cache (``cache``, or ``past_key_values`` as transformers < 5.24 calls it) is a
:class:`~mashup.models.state.RecurrentState` (constant size for conv and
linear-attention layers), so ``save_pretrained``/``from_pretrained``/``generate`` and the Auto
classes work as for any Hugging Face model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from mashup.errors import MashupError
from mashup.models.feature_maps import KERNELS
from mashup.models.hf_cache import CACHE_NAMES, OUTPUT_CACHE_FIELD, pick_cache
from mashup.models.layers import Block, LinearAttention, ShortConvolution, SoftmaxAttention
from mashup.models.ops import ATTN_MODES
from mashup.models.state import RecurrentState

LAYER_KINDS: tuple[str, ...] = ("conv", "linear_attn", "swa", "attn")
MODEL_TYPE = "mashup_linear_attn"


class LinearAttnConfig(PretrainedConfig):
    """Configuration of a Based/ReBased-style model.

    ``layers`` lists one mixer per block: ``conv`` (short gated causal conv), ``linear_attn``,
    ``swa`` (sliding-window softmax attention over ``window`` tokens) or ``attn`` (full causal
    softmax attention, the MQAR baseline). ``kernel`` picks the feature map; ``attn_mode`` the
    linear-attention form (``auto``: recurrent for one token, parallel within one chunk, chunked
    beyond).
    """

    model_type = MODEL_TYPE
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_heads"}

    vocab_size: int = 8192
    d_model: int = 64
    n_heads: int = 2
    feature_dim: int = 16
    kernel: str = "rebased"
    layers: list[str] | None = None
    mlp: bool = False
    mlp_ratio: int = 4
    conv_kernel: int = 3
    window: int = 64
    attn_mode: str = "auto"
    chunk_size: int = 64
    eps: float = 1e-6
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.layers is None:
            self.layers = ["conv", "linear_attn"]
        self.layers = list(self.layers)
        self._check()
        super().__post_init__(**kwargs)

    @property
    def num_hidden_layers(self) -> int:
        return len(self.layers or [])

    def _check(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise MashupError(
                    f"LinearAttnConfig: {name} must be a positive integer, got {value!r}",
                    hint=f"set {name} > 0",
                )

        for name in ("vocab_size", "d_model", "n_heads", "feature_dim", "conv_kernel", "window"):
            positive_int(name)
        for name in ("chunk_size", "mlp_ratio"):
            positive_int(name)
        if self.d_model % self.n_heads:
            raise MashupError(
                f"LinearAttnConfig: n_heads={self.n_heads} does not divide d_model={self.d_model}",
                hint="pick n_heads among the divisors of d_model",
            )
        if self.kernel not in KERNELS:
            raise MashupError(
                f"LinearAttnConfig: kernel {self.kernel!r} is unknown",
                hint=f"valid kernels: {', '.join(KERNELS)}",
            )
        if self.attn_mode not in ATTN_MODES:
            raise MashupError(
                f"LinearAttnConfig: attn_mode {self.attn_mode!r} is unknown",
                hint=f"valid modes: {', '.join(ATTN_MODES)}",
            )
        if not self.layers:
            raise MashupError(
                "LinearAttnConfig: layers is empty", hint=f"list mixers from {LAYER_KINDS}"
            )
        unknown = [kind for kind in self.layers if kind not in LAYER_KINDS]
        if unknown:
            raise MashupError(
                f"LinearAttnConfig: layers has unknown kind(s) {unknown}",
                hint=f"valid layer kinds: {', '.join(LAYER_KINDS)}",
            )
        if not (isinstance(self.eps, int | float) and self.eps > 0):
            raise MashupError(f"LinearAttnConfig: eps must be > 0, got {self.eps!r}")


def _make_mixer(kind: str, config: LinearAttnConfig) -> nn.Module:
    if kind == "conv":
        return ShortConvolution(config.d_model, config.conv_kernel)
    if kind == "linear_attn":
        return LinearAttention(
            config.d_model,
            config.n_heads,
            config.feature_dim,
            config.kernel,
            mode=config.attn_mode,
            chunk_size=config.chunk_size,
            eps=config.eps,
        )
    if kind == "swa":
        return SoftmaxAttention(config.d_model, config.n_heads, window=config.window)
    return SoftmaxAttention(config.d_model, config.n_heads, window=None)


class LinearAttnPreTrainedModel(PreTrainedModel):
    config_class = LinearAttnConfig
    config: LinearAttnConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _skip_keys_device_placement = list(CACHE_NAMES[:2])  # accelerate must not move the state

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        from transformers import initialization as init

        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Conv1d):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.RMSNorm):
            init.ones_(module.weight)
        elif hasattr(module, "gamma") or hasattr(module, "beta"):  # feature maps
            if getattr(module, "gamma", None) is not None:
                init.ones_(module.gamma)
            if getattr(module, "beta", None) is not None:
                init.zeros_(module.beta)


class LinearAttnModel(LinearAttnPreTrainedModel):
    """Embeddings, blocks and final norm; ``last_hidden_state`` [B, T, d_model]."""

    def __init__(self, config: LinearAttnConfig) -> None:
        super().__init__(config)
        ratio = config.mlp_ratio if config.mlp else None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(
            Block(_make_mixer(kind, config), config.d_model, config.norm_eps, ratio)
            for kind in config.layers
        )
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def init_state(
        self, batch_size: int = 1, device: torch.device | str | None = None
    ) -> RecurrentState:
        """The state of having read nothing; running from it equals running without a state."""
        device = torch.device(device) if device is not None else self.embed_tokens.weight.device
        return RecurrentState(
            [block.kind for block in self.layers],
            [block.init_state(batch_size, device) for block in self.layers],
            n_tokens=0,
        )

    def _check_state(self, state: RecurrentState, batch_size: int) -> RecurrentState:
        kinds = [block.kind for block in self.layers]
        if not isinstance(state, RecurrentState):
            raise MashupError(
                f"the cache must be a RecurrentState, got {type(state).__name__}",
                hint="use model.init_state(batch_size) or the cache a previous call returned",
            )
        if state.kinds != kinds:
            raise MashupError(
                f"state has layers {state.kinds} but the model has {kinds}",
                hint="use a state captured with this model",
            )
        if state.batch_size != batch_size:
            if state.batch_size == 1:  # one state shared by every row (e.g. answer choices)
                return state.repeat_interleave(batch_size)
            raise MashupError(f"state has batch size {state.batch_size}, input has {batch_size}")
        return state

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: RecurrentState | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        *,
        past_key_values: RecurrentState | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        cache = pick_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise MashupError("pass exactly one of input_ids and inputs_embeds")
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = hidden.shape[:2]
        use_cache = (
            use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        )
        output_hidden_states = output_hidden_states if output_hidden_states is not None else False
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        # Only padding matters here; the mask's columns for this call are its last `length`.
        mask = None
        if (
            attention_mask is not None
            and attention_mask.dim() == 2
            and not bool(attention_mask.all())
        ):
            mask = attention_mask[:, -length:].to(hidden.dtype)

        state = self._check_state(cache, batch) if cache is not None else None
        new_layers = []
        all_hidden = [hidden] if output_hidden_states else None
        for index, block in enumerate(self.layers):
            layer_state = state.layers[index] if state is not None else None
            hidden, new_state = block(hidden, layer_state, mask)
            new_layers.append(new_state)
            if all_hidden is not None:
                all_hidden.append(hidden)
        hidden = self.norm(hidden)

        new_cache = None
        if use_cache:
            read = int(mask.sum(-1).max().item()) if mask is not None else length
            previous = state.n_tokens if state is not None else 0
            new_cache = RecurrentState(
                [block.kind for block in self.layers], new_layers, n_tokens=previous + read
            )
        if not return_dict:
            return tuple(x for x in (hidden, new_cache, all_hidden) if x is not None)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            **{OUTPUT_CACHE_FIELD: new_cache},
        )


class LinearAttnForCausalLM(LinearAttnPreTrainedModel, GenerationMixin):
    """Causal LM head on LinearAttnModel; its cache is a RecurrentState."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LinearAttnConfig) -> None:
        super().__init__(config)
        self.model = LinearAttnModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # Our forward builds its own RecurrentState; a DynamicCache would be meaningless.
        return False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def init_state(
        self, batch_size: int = 1, device: torch.device | str | None = None
    ) -> RecurrentState:
        return self.model.init_state(batch_size, device)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: RecurrentState | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        *,
        past_key_values: RecurrentState | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=pick_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=-100,
            )
        if not return_dict:
            out = (logits, outputs[OUTPUT_CACHE_FIELD], outputs.hidden_states)
            out = tuple(x for x in out if x is not None)
            return ((loss, *out)) if loss is not None else out
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **{OUTPUT_CACHE_FIELD: outputs.get(OUTPUT_CACHE_FIELD)},
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: RecurrentState | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        use_cache: bool | None = True,
        *,
        past_key_values: RecurrentState | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """First call: the whole prompt, read after the cache if one was given (so a captured
        or mixed state can precede any prompt); then only the newest token."""
        cache = pick_cache(cache, past_key_values)
        model_inputs: dict[str, Any] = {"use_cache": use_cache, "attention_mask": attention_mask}
        if is_first_iteration or cache is None or not use_cache:
            if inputs_embeds is not None and is_first_iteration:
                model_inputs["inputs_embeds"] = inputs_embeds
            else:
                model_inputs["input_ids"] = input_ids.contiguous()
        else:
            model_inputs["input_ids"] = input_ids[:, -1:].contiguous()
        if cache is not None and use_cache:
            model_inputs["cache"] = cache
        if "logits_to_keep" in kwargs:
            model_inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return model_inputs
