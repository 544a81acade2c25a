"""Physical pruning must reproduce the dense model with the removed dimensions zeroed, for every family."""

import copy
import os

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn

from diet import DietError
from diet.models.adapters import get_adapter
from diet.prune import count_params, load_pruned, prune_model, save_pruned, zero_masked_reference

# float32 throughout; exact math up to rounding, so tight tolerances.
ATOL, RTOL = 1e-5, 1e-4

FAMILIES = ["gemma2", "gemma3_text", "llama", "llama_tied", "qwen2", "mistral"]
TARGETS = ["mlp", "hidden"]
HIDDEN, INTERMEDIATE, LAYERS, VOCAB = 64, 96, 2, 128


def tiny_config(family: str, **overrides) -> transformers.PretrainedConfig:
    """A 2-layer float32 config with grouped-query attention (4 query heads, 2 key/value heads).

    rms_norm_eps is 1e-4 so that, with the default init std of 0.02, eps is comparable to the mean square of
    the small activations entering the norms: a pruning that gets eps wrong fails these tests.
    """
    common = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-4,
    )
    gemma = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=8)
    per_family = {
        "gemma2": (transformers.Gemma2Config, gemma),
        "gemma3_text": (transformers.Gemma3TextConfig, gemma),
        "llama": (transformers.LlamaConfig, dict(tie_word_embeddings=False)),
        # tied embeddings, plus biases on every projection so that bias handling is exercised
        "llama_tied": (transformers.LlamaConfig, dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True)),
        "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=False)),
        "mistral": (transformers.MistralConfig, dict(tie_word_embeddings=False, sliding_window=8)),
    }
    config_class, extra = per_family[family]
    return config_class(**{**common, **extra, **overrides})


def tiny_model(family: str, seed: int = 0, **overrides) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(
            tiny_config(family, **overrides), attn_implementation="eager"
        )
        # Default init leaves norms at identity and biases at zero; perturb them so those paths are tested too.
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "norm" in name or name.endswith("bias"):
                    parameter.add_(0.1 * torch.randn_like(parameter))
    return model.float().eval()


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


def input_ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids()).logits


def random_keep(length: int, n_keep: int, seed: int) -> torch.Tensor:
    keep = torch.zeros(length, dtype=torch.bool)
    keep[torch.randperm(length, generator=torch.Generator().manual_seed(seed))[:n_keep]] = True
    return keep


def make_masks(target: str, mlp_keep: list[int] | None = None, hidden_keep: int = 48) -> dict[str, torch.Tensor]:
    if target == "hidden":
        return {"hidden": random_keep(HIDDEN, hidden_keep, seed=7)}
    mlp_keep = mlp_keep or [72] * LAYERS
    return {f"mlp.{i}": random_keep(INTERMEDIATE, n, seed=10 + i) for i, n in enumerate(mlp_keep)}


def pruned_and_reference(family: str, target: str, masks: dict) -> tuple[nn.Module, nn.Module, nn.Module]:
    dense = tiny_model(family)
    reference = zero_masked_reference(copy.deepcopy(dense), get_adapter(dense), masks, target)
    pruned = prune_model(copy.deepcopy(dense), get_adapter(dense), masks, target)
    return dense, pruned, reference


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_logits_equal_zeroed_dense_logits(family, target):
    masks = make_masks(target)
    dense, pruned, reference = pruned_and_reference(family, target, masks)
    adapter = get_adapter(pruned)

    torch.testing.assert_close(logits(pruned), logits(reference), atol=ATOL, rtol=RTOL)
    # The zeroing is not a no-op: the reference really differs from the dense model.
    assert (logits(reference) - logits(dense)).abs().max() > 100 * ATOL
    assert count_params(pruned) < count_params(dense)
    layer = adapter.decoder_layers(pruned)[0]
    gate, up, down = adapter.mlp_projections(layer)
    if target == "mlp":
        assert gate.weight.shape == up.weight.shape == (72, HIDDEN)
        assert down.weight.shape == (HIDDEN, 72) and down.in_features == 72
        assert pruned.config.intermediate_size == 72
        assert not hasattr(pruned.config, "intermediate_sizes")
    else:
        assert adapter.embedding(pruned).weight.shape == (VOCAB, 48)
        assert adapter.lm_head(pruned).weight.shape == (VOCAB, 48)
        assert layer.self_attn.q_proj.weight.shape == (4 * 16, 48)
        assert layer.self_attn.o_proj.weight.shape == (48, 4 * 16)
        assert gate.weight.shape == (INTERMEDIATE, 48) and down.weight.shape == (48, INTERMEDIATE)
        norms = [*adapter.residual_norms(layer).pre, *adapter.residual_norms(layer).post, adapter.final_norm(pruned)]
        assert all(norm.weight.shape == (48,) for norm in norms)
        assert pruned.config.hidden_size == 48 and pruned.config.head_dim == 16
        assert pruned.config.rms_norm_eps == dense.config.rms_norm_eps
    assert adapter.word_embeddings_tied(pruned) == adapter.word_embeddings_tied(dense)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_gemma_embedding_scale_follows_new_width(family, tmp_path):
    _, pruned, _ = pruned_and_reference(family, "hidden", make_masks("hidden"))
    embedding = get_adapter(pruned).embedding(pruned)
    assert embedding.embed_scale.item() == pytest.approx(48**0.5)
    assert not any(key.endswith("embed_scale") for key in pruned.state_dict())  # non-persistent: recomputed on load
    save_pruned(pruned, None, tmp_path / "model")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert get_adapter(reloaded).embedding(reloaded).embed_scale.item() == pytest.approx(48**0.5)


def slice_hidden_correcting_norm_weights_only(model: nn.Module, keep: torch.Tensor) -> nn.Module:
    """The tempting fix: slice, and divide every norm's scale by c = sqrt(d'/d) to undo the mean over d' < d.

    That is exact for sqrt(mean(x^2)) but turns the norms' eps into eps * d / d'.
    """
    adapter = get_adapter(model)
    kept = keep.nonzero().squeeze(1)
    c = (kept.numel() / keep.numel()) ** 0.5
    offset = adapter.norm_offset
    with torch.no_grad():
        embedding, lm_head = adapter.embedding(model), adapter.lm_head(model)
        embedding.weight = nn.Parameter(embedding.weight[:, kept])
        tied = adapter.word_embeddings_tied(model)
        lm_head.weight = embedding.weight if tied else nn.Parameter(lm_head.weight[:, kept])
        norms = [adapter.final_norm(model)]
        for layer in adapter.decoder_layers(model):
            for reader in adapter.residual_readers(layer):
                reader.weight = nn.Parameter(reader.weight[:, kept])
            for writer in adapter.residual_writers(layer):
                writer.weight = nn.Parameter(writer.weight[kept])
                if writer.bias is not None:
                    writer.bias = nn.Parameter(writer.bias[kept])
            norms += [*adapter.residual_norms(layer).pre, *adapter.residual_norms(layer).post]
        for norm in norms:
            norm.weight = nn.Parameter((offset + norm.weight[kept]) / c - offset)
    return model  # Gemma's embed_scale stays sqrt(d): this variant keeps the stream unscaled


@pytest.mark.parametrize("family", FAMILIES)
def test_slicing_without_eps_correction_does_not_match(family):
    masks = make_masks("hidden")
    dense = tiny_model(family)
    reference = zero_masked_reference(copy.deepcopy(dense), get_adapter(dense), masks, "hidden")
    naive = slice_hidden_correcting_norm_weights_only(copy.deepcopy(dense), masks["hidden"])
    with pytest.raises(AssertionError):
        torch.testing.assert_close(logits(naive), logits(reference), atol=ATOL, rtol=RTOL)

    # With eps = 0 the same slicing matches: eps is exactly what it gets wrong.
    dense = tiny_model(family, rms_norm_eps=0.0)
    reference = zero_masked_reference(copy.deepcopy(dense), get_adapter(dense), masks, "hidden")
    naive = slice_hidden_correcting_norm_weights_only(copy.deepcopy(dense), masks["hidden"])
    torch.testing.assert_close(logits(naive), logits(reference), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_pruned_model_loads_with_plain_from_pretrained(family, target, tmp_path):
    _, pruned, _ = pruned_and_reference(family, target, make_masks(target))
    tokenizer = tiny_tokenizer()
    save_pruned(pruned, tokenizer, tmp_path / "pruned_model")

    assert (tmp_path / "pruned_model" / "model.safetensors").is_file()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "pruned_model", attn_implementation="eager"
    )
    torch.testing.assert_close(logits(reloaded), logits(pruned), atol=ATOL, rtol=RTOL)
    assert count_params(reloaded) == count_params(pruned)
    adapter = get_adapter(reloaded)
    assert adapter.word_embeddings_tied(reloaded) == adapter.word_embeddings_tied(pruned)
    loaded_model, loaded_tokenizer = load_pruned(tmp_path / "pruned_model", attn_implementation="eager")
    torch.testing.assert_close(logits(loaded_model), logits(pruned), atol=ATOL, rtol=RTOL)
    assert loaded_tokenizer("w1 w5 w9")["input_ids"] == tokenizer("w1 w5 w9")["input_ids"]


@pytest.mark.parametrize("family", FAMILIES)
def test_nonuniform_mlp_widths_in_memory_and_through_load_pruned(family, tmp_path):
    masks = make_masks("mlp", mlp_keep=[40, 88])
    _, pruned, reference = pruned_and_reference(family, "mlp", masks)
    adapter = get_adapter(pruned)
    torch.testing.assert_close(logits(pruned), logits(reference), atol=ATOL, rtol=RTOL)
    assert adapter.intermediate_sizes(pruned) == [40, 88]
    assert pruned.config.intermediate_sizes == [40, 88] and pruned.config.intermediate_size == 88

    save_pruned(pruned, tiny_tokenizer(), tmp_path / "pruned_model")
    reloaded, tokenizer = load_pruned(tmp_path / "pruned_model", attn_implementation="eager")
    assert type(reloaded).__name__ == type(pruned).__name__ and isinstance(reloaded, type(pruned))
    assert get_adapter(reloaded).intermediate_sizes(reloaded) == [40, 88]
    assert reloaded.config.intermediate_sizes == [40, 88]
    assert tokenizer is not None
    torch.testing.assert_close(logits(reloaded), logits(pruned), atol=ATOL, rtol=RTOL)
    assert count_params(reloaded) == count_params(pruned)


def test_nonuniform_checkpoint_is_refused_by_plain_from_pretrained(tmp_path):
    _, pruned, _ = pruned_and_reference("llama", "mlp", make_masks("mlp", mlp_keep=[40, 88]))
    save_pruned(pruned, None, tmp_path / "model")
    with pytest.raises(Exception, match="(?i)size|shape"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model")


@pytest.mark.parametrize("family", ["gemma3_text", "llama_tied"])
def test_mlp_then_hidden_pruning_compose(family, tmp_path):
    dense = tiny_model(family)
    adapter = get_adapter(dense)
    mlp_masks, hidden_masks = make_masks("mlp", mlp_keep=[40, 88]), make_masks("hidden")
    reference = copy.deepcopy(dense)
    zero_masked_reference(reference, adapter, mlp_masks, "mlp")
    zero_masked_reference(reference, adapter, hidden_masks, "hidden")
    pruned = prune_model(dense, adapter, mlp_masks, "mlp")
    prune_model(pruned, adapter, hidden_masks, "hidden")
    torch.testing.assert_close(logits(pruned), logits(reference), atol=ATOL, rtol=RTOL)

    save_pruned(pruned, None, tmp_path / "model")
    reloaded, tokenizer = load_pruned(tmp_path / "model", attn_implementation="eager")
    assert tokenizer is None
    torch.testing.assert_close(logits(reloaded), logits(pruned), atol=ATOL, rtol=RTOL)
    assert get_adapter(reloaded).intermediate_sizes(reloaded) == [40, 88]
    assert get_adapter(reloaded).word_embeddings_tied(reloaded)


def test_count_params_counts_tied_weights_once():
    tied, untied = tiny_model("llama_tied"), tiny_model("llama", attention_bias=True, mlp_bias=True)
    assert count_params(untied) == sum(p.numel() for p in untied.state_dict().values())
    assert count_params(tied) == count_params(untied) - VOCAB * HIDDEN


def test_save_pruned_replaces_existing_folder_and_leaves_no_temp(tmp_path):
    target = tmp_path / "pruned_model"
    target.mkdir()
    (target / "stale.txt").write_text("old run")
    _, pruned, _ = pruned_and_reference("qwen2", "mlp", make_masks("mlp"))
    save_pruned(pruned, tiny_tokenizer(), target)
    assert sorted(os.listdir(tmp_path)) == ["pruned_model"]
    assert not (target / "stale.txt").exists() and (target / "config.json").is_file()


ALL_KEPT = torch.ones(HIDDEN, dtype=torch.bool)
BAD_MASKS = [
    (
        "mlp",
        {"mlp.0": torch.ones(INTERMEDIATE, dtype=torch.bool)},
        "masks['mlp.1']: missing for target 'mlp'; expected a bool mask of length 96",
    ),
    (
        "hidden",
        {"hidden": torch.ones(50, dtype=torch.bool)},
        "masks['hidden']: length 50 found; expected a 1-D bool mask of length 64",
    ),
    (
        "hidden",
        {"hidden": torch.ones(HIDDEN)},
        "masks['hidden']: dtype torch.float32 (length 64) is not allowed; expected a torch.bool mask of length 64",
    ),
    (
        "hidden",
        {"hidden": torch.zeros(HIDDEN, dtype=torch.bool)},
        "masks['hidden']: keeps 0 of 64 dimensions (length 64, expected 64)",
    ),
    (
        "hidden",
        {"hidden": [True] * HIDDEN},
        "masks['hidden']: a list is not allowed; expected a torch.bool tensor of length 64",
    ),
    (
        "hidden",
        {"hidden": ALL_KEPT, "mlp.0": torch.ones(3, dtype=torch.bool)},
        "masks: unexpected key 'mlp.0' for target 'hidden'; allowed keys: hidden",
    ),
    ("width", {}, "prune.target: 'width' is not supported; allowed: mlp, hidden"),
]


@pytest.mark.parametrize("target, masks, message", BAD_MASKS)
def test_bad_masks_raise_one_line_diet_errors_and_leave_the_model_alone(target, masks, message):
    model = tiny_model("llama")
    before = logits(model)
    for function in (prune_model, zero_masked_reference):
        with pytest.raises(DietError) as error:
            function(model, get_adapter(model), masks, target)
        assert str(error.value).startswith(message)
        assert "\n" not in str(error.value)
    torch.testing.assert_close(logits(model), before, atol=0, rtol=0)


def test_unsupported_architecture_is_a_diet_error():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB))
    with pytest.raises(DietError) as error:
        get_adapter(gpt2)
    assert str(error.value) == (
        "model: architecture 'gpt2' is not supported; supported families: gemma2, gemma3_text, llama, mistral, qwen2"
    )


def test_load_pruned_of_a_folder_without_a_model_is_a_diet_error(tmp_path):
    with pytest.raises(DietError, match="has no config.json; expected a folder written by save_pruned"):
        load_pruned(tmp_path / "nowhere")


def test_pruning_a_model_with_offloaded_weights_is_a_one_line_error():
    from accelerate import cpu_offload

    model = transformers.AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
    offloaded = cpu_offload(model, execution_device=torch.device("cpu"))
    masks = {f"mlp.{i}": torch.ones(INTERMEDIATE, dtype=torch.bool) for i in range(LAYERS)}
    with pytest.raises(DietError) as err:
        prune_model(offloaded, get_adapter(offloaded), masks, "mlp")
    assert str(err.value).startswith("prune: ") and "offloaded by model.device_map" in str(err.value)
    assert "model.offload=true" in str(err.value) and "\n" not in str(err.value)
