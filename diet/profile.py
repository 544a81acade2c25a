"""Profile stage: forward hooks accumulate per-dimension activation statistics over calibration texts.

One pass collects, per hook point and dimension, over non-padding tokens only: sum |x|, sum x^2, max |x| and the token
count, in float32 on the device of the hooked module. Every scoring variant is derived from these without another pass.
Padding is skipped by weighting tokens with the attention mask (a matmul), so the hooks never sync with the host.

Hook points per target:
  mlp    -> `mlp.<i>`: the input of layer i's down projection (intermediate width)
  hidden -> `hidden.<i>`: the residual stream entering decoder layer i, and `hidden.<L>` entering the final norm
(Attention heads would be a third target: hook the input of o_proj and reduce per head.)
"""
from __future__ import annotations

import logging
import time

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

STATS = ("sum_abs", "sum_sq", "max_abs", "count")
TARGETS = ("mlp", "hidden")


class _Accumulator:
    """Holds the running sums of one hook point; `weights` is the current batch's flattened attention mask."""

    def __init__(self, batch_state: dict):
        self.batch_state = batch_state
        self.sums: dict[str, torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1]).float()
        weights = self.batch_state["weights"]
        if weights.device != flat.device:
            weights = weights.to(flat.device, non_blocking=True)
        magnitude = flat.abs()
        batch = {
            "sum_abs": weights @ magnitude,
            "sum_sq": weights @ (flat * flat),
            "max_abs": (magnitude * weights[:, None]).amax(dim=0),
            "count": weights.sum().reshape(1),
        }
        if self.sums is None:
            self.sums = batch
        else:
            for name in ("sum_abs", "sum_sq", "count"):
                self.sums[name] += batch[name]
            torch.maximum(self.sums["max_abs"], batch["max_abs"], out=self.sums["max_abs"])


def hook_points(model, adapter, target: str) -> dict[str, torch.nn.Module]:
    """Name -> module whose first forward input is the activation to profile."""
    layers = adapter.decoder_layers(model)
    if target == "mlp":
        return {f"mlp.{i}": adapter.mlp_projections(layer)[2] for i, layer in enumerate(layers)}
    if target == "hidden":
        points = {f"hidden.{i}": layer for i, layer in enumerate(layers)}
        points[f"hidden.{len(layers)}"] = adapter.final_norm(model)
        return points
    raise ValueError(f"unknown target {target!r}")


def _first_input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def tokenize(tokenizer, texts: list[str], max_length: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches with attention masks; texts sorted by length so batches carry little padding."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = []
    for start in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[start:start + batch_size]]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(rows):
            input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[r, :len(ids)] = 1
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask})
    return batches


def _decoder(model):
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


@torch.inference_mode()
def collect(model, adapter, batches: list[dict[str, torch.Tensor]], target: str, *, desc: str = "profile"
            ) -> dict[str, dict[str, torch.Tensor]]:
    """Run the batches through the model once; return {hook point: {stat: tensor}} (float32, on the point's device).

    Only the decoder runs (the LM head's logits are not needed), which for Gemma's 262k vocabulary is most of the work.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}")
    batch_state: dict = {}
    accumulators = {name: _Accumulator(batch_state) for name in hook_points(model, adapter, target)}
    handles = [
        module.register_forward_pre_hook(
            lambda _m, args, kwargs, acc=accumulators[name]: acc(_first_input(args, kwargs)), with_kwargs=True)
        for name, module in hook_points(model, adapter, target).items()
    ]
    device = next(model.parameters()).device
    decoder = _decoder(model)
    try:
        for batch in tqdm(batches, desc=desc, leave=False, disable=None):
            input_ids = batch["input_ids"].to(device, non_blocking=True)
            attention_mask = batch["attention_mask"].to(device, non_blocking=True)
            batch_state["weights"] = attention_mask.reshape(-1).float()
            decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: acc.sums for name, acc in accumulators.items() if acc.sums is not None}


def profile_texts(model, adapter, tokenizer, texts: list[str], target: str, *, max_length: int, batch_size: int,
                  desc: str = "profile") -> dict[str, dict[str, torch.Tensor]]:
    started = time.perf_counter()
    batches = tokenize(tokenizer, texts, max_length, batch_size)
    stats = collect(model, adapter, batches, target, desc=desc)
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    log.info("%s: %d texts, %d tokens in %.2f s", desc, len(texts), tokens, time.perf_counter() - started)
    return stats


def flatten(stats: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{point}/{name}": t for point, named in stats.items() for name, t in named.items()}


def unflatten(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        point, name = key.rsplit("/", 1)
        stats.setdefault(point, {})[name] = t
    return stats
