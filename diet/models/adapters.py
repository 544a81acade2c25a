"""Per-family knowledge of where things live in a Hugging Face causal LM.

Every supported family is a `<Family>ForCausalLM` whose decoder sits at `model.model` and whose LM head is
`model.lm_head`. The adapters differ in the norms around each sub-block, the RMSNorm parametrisation, the
embedding scale, the config flags that give projections biases and the config fields that derive each layer's
attention type; the pruning code asks the adapter and never looks at module names itself.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
from torch import nn

from diet import DietError


class ResidualNorms(NamedTuple):
    """RMSNorms of one decoder layer over the residual width.

    pre: their output feeds readers (q/k/v, gate/up); post: they normalise a writer's output before it is added
    to the residual stream (Gemma-2/3 only).
    """

    pre: list[nn.Module]
    post: list[nn.Module]


# The two sub-blocks of a decoder layer that write to the residual stream, by the names diet uses for them.
BLOCKS = ("attention", "mlp")


class Adapter:
    """Common structure of the supported `<Family>ForCausalLM` models."""

    family: str = ""
    # block -> the config flag under which the family's constructor gives all of that block's projections a bias
    bias_flags: dict[str, str] = {}
    # RMSNorm computes x_hat * (norm_offset + weight): Gemma stores the scale as (1 + weight).
    norm_offset: float = 0.0
    # The embedding module multiplies its output by sqrt(config.hidden_size) (Gemma).
    embedding_scaled_by_sqrt_width: bool = False

    def decoder(self, model: nn.Module) -> nn.Module:
        """The decoder stack (embedding, layers, final norm), callable without the LM head."""
        return model.model

    def decoder_layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.model.layers)

    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        """The decoder's own ModuleList (assigning into it swaps a layer in place)."""
        return model.model.layers

    def remove_layers(self, model: nn.Module, keep: list[int]) -> None:
        """Keep only the decoder layers `keep` (sorted, distinct, validated by the caller), renumbered 0..len-1.

        Each kept layer keeps its own attention type: the attention module fixed its sliding window at
        construction, and the model picks each layer's mask (and Gemma-3 its RoPE) from `config.layer_types[i]`,
        which is sliced to match. Every module carrying `layer_idx` (attention, Gemma-3's decoder layer) gets
        the new index, which is the one the KV cache is indexed by. The saved config states `layer_types`
        explicitly, and in 5.23 an explicit list wins over the fields it is otherwise derived from (Gemma-3's
        `sliding_window_pattern`, Qwen2's `max_window_layers`), so a reload builds the same types.
        """
        layers = self.layer_list(model)
        kept = [layers[i] for i in keep]
        for new_index, layer in enumerate(kept):
            for module in layer.modules():
                if isinstance(getattr(module, "layer_idx", None), int):
                    module.layer_idx = new_index
        model.model.layers = nn.ModuleList(kept)
        config = model.config
        config.num_hidden_layers = len(kept)
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [config.layer_types[i] for i in keep]

    def final_norm(self, model: nn.Module) -> nn.Module:
        return model.model.norm

    def set_final_norm(self, model: nn.Module, norm: nn.Module) -> None:
        model.model.norm = norm

    def embedding(self, model: nn.Module) -> nn.Embedding:
        return model.model.embed_tokens

    def lm_head(self, model: nn.Module) -> nn.Linear:
        return model.lm_head

    def mlp_projections(self, layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        mlp = layer.mlp
        return mlp.gate_proj, mlp.up_proj, mlp.down_proj

    def set_mlp_width_attribute(self, layer: nn.Module, width: int) -> None:
        if hasattr(layer.mlp, "intermediate_size"):  # informational attribute of the HF MLP modules
            layer.mlp.intermediate_size = width

    def set_hidden_size_attribute(self, layer: nn.Module, width: int) -> None:
        if hasattr(layer, "hidden_size"):  # informational attribute of the HF decoder layers
            layer.hidden_size = width

    def attention_projections(self, layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        """(q_proj, k_proj, v_proj, o_proj) of one layer."""
        attn = layer.self_attn
        return attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj

    def block_projections(self, layer: nn.Module, block: str) -> tuple[nn.Linear, ...]:
        """Every projection of one sub-block ("attention" or "mlp"), the output projection last."""
        return self.attention_projections(layer) if block == "attention" else self.mlp_projections(layer)

    def output_projection(self, layer: nn.Module, block: str) -> nn.Linear:
        """o_proj ("attention") or down_proj ("mlp"): the projection whose bias is added to the residual stream."""
        return self.block_projections(layer, block)[-1]

    def sliding_window(self, layer: nn.Module) -> int | None:
        """The layer's attention window in tokens; None for full attention."""
        return getattr(layer.self_attn, "sliding_window", None)

    def layer_head_dim(self, layer: nn.Module) -> int:
        return layer.self_attn.head_dim

    def num_heads(self, layer: nn.Module) -> int:
        """Query heads of one layer, read from o_proj's width (so it follows pruning)."""
        return self.attention_projections(layer)[3].in_features // self.layer_head_dim(layer)

    def num_kv_heads(self, layer: nn.Module) -> int:
        return self.attention_projections(layer)[1].out_features // self.layer_head_dim(layer)

    def set_head_counts(self, layer: nn.Module, n_heads: int, n_kv_heads: int) -> None:
        """After slicing q/k/v/o: the attention module repeats each KV head n_heads / n_kv_heads times."""
        attn = layer.self_attn
        attn.num_key_value_groups = n_heads // n_kv_heads
        for name, value in (("num_heads", n_heads), ("num_key_value_heads", n_kv_heads)):
            if hasattr(attn, name):  # informational in transformers 5.23 (shapes come from head_dim)
                setattr(attn, name, value)

    def residual_readers(self, layer: nn.Module) -> list[nn.Linear]:
        attn = layer.self_attn
        gate, up, _ = self.mlp_projections(layer)
        return [attn.q_proj, attn.k_proj, attn.v_proj, gate, up]

    def residual_writers(self, layer: nn.Module) -> list[nn.Linear]:
        _, _, down = self.mlp_projections(layer)
        return [layer.self_attn.o_proj, down]

    def residual_norms(self, layer: nn.Module) -> ResidualNorms:
        raise NotImplementedError

    def head_dim(self, model: nn.Module) -> int:
        return self.decoder_layers(model)[0].self_attn.head_dim

    def hidden_size(self, model: nn.Module) -> int:
        return self.embedding(model).weight.shape[1]

    def intermediate_sizes(self, model: nn.Module) -> list[int]:
        return [self.mlp_projections(layer)[2].in_features for layer in self.decoder_layers(model)]

    def word_embeddings_tied(self, model: nn.Module) -> bool:
        return self.lm_head(model).weight is self.embedding(model).weight

    def refresh_embedding_scale(self, model: nn.Module) -> None:
        """Make the embedding's scale agree with `model.config.hidden_size` after that changed (no-op by default)."""

    # ------------------------------------------------------------------ rotated residual stream (SliceGPT)
    # A rotated decoder layer (diet/transforms/rotation.py) is the family's own layer whose class is swapped for a
    # same-named subclass with `rotated_forward`; it owns up to four extra matrices, each None where it is the
    # identity or absent: attn_shortcut / mlp_shortcut (the residual from the basis entering the block to the
    # basis the block writes in, applied as `residual @ S`) and, for families whose writers are followed by a norm
    # (Gemma's post norms), attn_post_map / mlp_post_map (that norm's scale times the rotation, applied after it).
    ROTATED_PARAMETERS = ("attn_shortcut", "mlp_shortcut", "attn_post_map", "mlp_post_map")

    def make_rotated(self, layer: nn.Module) -> nn.Module:
        """Turn one decoder layer into its rotated form, in place (the extra matrices start as None)."""
        if not getattr(layer, "diet_rotated", False):
            layer.__class__ = _rotated_class(type(layer), self)
            for name in self.ROTATED_PARAMETERS:
                layer.register_parameter(name, None)
        return layer

    def is_rotated(self, model: nn.Module) -> bool:
        return bool(getattr(model.config, "rotated_residual", None))

    def rotated_forward(self, layer: nn.Module, hidden_states: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """The decoder layer's computation with the shortcut and post maps; the attention module gets the layer's
        keyword arguments as the family's own forward hands them on."""
        norms = self.residual_norms(layer)
        post_attn, post_mlp = norms.post if norms.post else (None, None)
        residual = hidden_states
        h, _ = layer.self_attn(hidden_states=norms.pre[0](hidden_states), **kwargs)
        if post_attn is not None:
            h = post_attn(h)
        if layer.attn_post_map is not None:
            h = h @ layer.attn_post_map
        hidden_states = (residual if layer.attn_shortcut is None else residual @ layer.attn_shortcut) + h
        residual = hidden_states
        h = layer.mlp(norms.pre[-1](hidden_states))
        if post_mlp is not None:
            h = post_mlp(h)
        if layer.mlp_post_map is not None:
            h = h @ layer.mlp_post_map
        return (residual if layer.mlp_shortcut is None else residual @ layer.mlp_shortcut) + h


class LlamaLikeAdapter(Adapter):
    """Llama, Mistral, Qwen2: pre-norm blocks, RMSNorm scale `weight`, unscaled embeddings.

    `post_attention_layernorm` is, despite its name, the pre-norm of the MLP.
    """

    def residual_norms(self, layer: nn.Module) -> ResidualNorms:
        return ResidualNorms(pre=[layer.input_layernorm, layer.post_attention_layernorm], post=[])


class LlamaAdapter(LlamaLikeAdapter):
    family = "llama"
    bias_flags = {"attention": "attention_bias", "mlp": "mlp_bias"}


class MistralAdapter(LlamaLikeAdapter):
    family = "mistral"


class Qwen2Adapter(LlamaLikeAdapter):
    """q/k/v always have biases and o_proj and the MLP never do (no config flag)."""

    family = "qwen2"

    def remove_layers(self, model: nn.Module, keep: list[int]) -> None:
        # layer_types (saved explicitly) decides; keep max_window_layers (full below it, sliding from it on)
        # telling the same story, which it can, since kept layers keep their order.
        window_layers = getattr(model.config, "max_window_layers", None)
        super().remove_layers(model, keep)
        if window_layers is not None:
            model.config.max_window_layers = sum(1 for i in keep if i < window_layers)


class GemmaAdapter(Adapter):
    """Gemma-2 and Gemma-3 text: sandwich norms, RMSNorm scale `1 + weight`, embeddings times sqrt(hidden_size).

    In transformers 5.23 both families keep that factor in a non-persistent `embed_scale` buffer of the
    embedding module, computed once from `config.hidden_size` at construction; it is not saved, so a reloaded
    model recomputes it from the saved config, and an in-memory model needs `refresh_embedding_scale`.
    """

    norm_offset = 1.0
    embedding_scaled_by_sqrt_width = True
    bias_flags = {"attention": "attention_bias"}  # the MLP has no bias flag

    def residual_norms(self, layer: nn.Module) -> ResidualNorms:
        return ResidualNorms(
            pre=[layer.input_layernorm, layer.pre_feedforward_layernorm],
            post=[layer.post_attention_layernorm, layer.post_feedforward_layernorm],
        )

    def refresh_embedding_scale(self, model: nn.Module) -> None:
        embedding = self.embedding(model)
        scale = model.config.hidden_size**0.5
        embedding.scalar_embed_scale = scale
        old = embedding.embed_scale
        # Assigning to a registered buffer keeps its registration (and its non-persistence).
        embedding.embed_scale = torch.tensor(scale, dtype=old.dtype, device=old.device)


class Gemma2Adapter(GemmaAdapter):
    family = "gemma2"


class Gemma3TextAdapter(GemmaAdapter):
    family = "gemma3_text"


_ROTATED_CLASSES: dict[type, type] = {}


def _rotated_class(base: type, adapter: Adapter) -> type:
    """A subclass of the family's decoder layer (same name) whose forward is `adapter.rotated_forward`; positional
    arguments are bound to the family forward's own names first."""
    if base not in _ROTATED_CLASSES:
        signature = inspect.signature(base.forward)

        def forward(self, hidden_states, *args, **kwargs):
            if args:
                bound = signature.bind(self, hidden_states, *args, **kwargs).arguments
                extra = bound.pop("kwargs", {})
                kwargs = {k: v for k, v in bound.items() if k not in ("self", "hidden_states")} | extra
            return adapter.rotated_forward(self, hidden_states, kwargs)

        _ROTATED_CLASSES[base] = type(base.__name__, (base,), {"forward": forward, "diet_rotated": True,
                                                                "__module__": base.__module__})
    return _ROTATED_CLASSES[base]


ADAPTERS: dict[str, type[Adapter]] = {
    "gemma2": Gemma2Adapter,
    "gemma3_text": Gemma3TextAdapter,
    "llama": LlamaAdapter,
    "mistral": MistralAdapter,
    "qwen2": Qwen2Adapter,
}


def get_adapter(model: nn.Module) -> Adapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise DietError(
            f"model: architecture {model_type!r} is not supported; supported families: {', '.join(sorted(ADAPTERS))}"
        )
    if not hasattr(model, "lm_head"):
        raise DietError(
            f"model: {type(model).__name__} has no lm_head; pass a causal LM (AutoModelForCausalLM), not a base model"
        )
    return ADAPTERS[model_type]()
