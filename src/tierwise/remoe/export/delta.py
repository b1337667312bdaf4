"""Router-only deltas: the fine-tuned gate matrices of a model, and nothing else, as one safetensors file.

A delta maps each router parameter's full name (e.g. `model.layers.3.mlp.gate.weight`) to its new (E, H)
float32 matrix: the complete replacement weights, not a difference, so applying it is a copy. The header
metadata records the architecture, E, K, hidden size and MoE layers, which `apply_router_delta` checks
against the target model before touching anything.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.adapters import adapter_for

FORMAT = "tierwise-router-delta"
VERSION = "1"
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class RouterDelta:
    """Gate matrices by parameter name, plus the facts of the model they were trained on."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def by_layer(self) -> dict[int, torch.Tensor]:
        """The gate matrix of each decoder layer index (what GGUF's blk.N.ffn_gate_inp.weight holds)."""
        return {layer_index(name): tensor for name, tensor in self.tensors.items()}


def layer_index(name: str) -> int:
    """The decoder layer N of a router parameter name such as `model.layers.N.mlp.gate.weight`."""
    match = _LAYER_RE.search(name)
    if match is None:
        raise TierwiseError(f"router tensor {name!r} names no decoder layer (expected '...layers.N...')")
    return int(match.group(1))


def router_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The current router weights of `model` as detached float32 CPU copies, keyed by parameter name."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().float().cpu().clone() for name in adapter_for(model).router_param_names()}


def delta_meta(model: nn.Module, **extra: Any) -> dict[str, Any]:
    adapter = adapter_for(model)
    return {"format": FORMAT, "version": VERSION, "model_type": adapter.model_type, "num_experts": adapter.num_experts,
            "top_k": adapter.top_k, "hidden_size": adapter.hidden_size, "moe_layers": list(adapter.moe_layers), **extra}


def save_router_delta(model: nn.Module, path: str | Path, *, state_dict: dict[str, torch.Tensor] | None = None,
                      **extra_meta: Any) -> Path:
    """Write the router weights of `model` (and its facts, plus `extra_meta`) as a delta file.

    `state_dict`: a full state dict to take the gates from instead of the module's own parameters (under FSDP the
    module holds only shards; `accelerator.get_state_dict` gathers them).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = delta_meta(model, **extra_meta)
    if state_dict is None:
        tensors = router_state(model)
    else:
        tensors = {n: state_dict[n].detach().float().cpu().clone() for n in adapter_for(model).router_param_names()}
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})
    return path


def load_router_delta(path: str | Path) -> RouterDelta:
    """Read a delta written by `save_router_delta`; a file that is not one raises TierwiseError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise TierwiseError(f"router delta not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise TierwiseError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items()}
    except json.JSONDecodeError as e:
        raise TierwiseError(f"{path}: corrupt router-delta metadata ({e})") from e
    if meta.get("format") != FORMAT:
        raise TierwiseError(f"{path}: not a tierwise router delta (metadata format={meta.get('format')!r})")
    if not tensors:
        raise TierwiseError(f"{path}: router delta holds no tensors")
    for name, t in tensors.items():
        if t.dim() != 2 or t.shape != (meta.get("num_experts"), meta.get("hidden_size")):
            raise TierwiseError(f"{path}: tensor {name} has shape {tuple(t.shape)}, expected "
                                f"({meta.get('num_experts')}, {meta.get('hidden_size')})")
        if not torch.isfinite(t).all():
            raise TierwiseError(f"{path}: tensor {name} holds non-finite values")
    return RouterDelta(tensors, meta)


def apply_router_delta(model: nn.Module, delta: RouterDelta | str | Path) -> nn.Module:
    """Copy the delta's gate matrices into `model` in place (all or nothing) and return it."""
    if not isinstance(delta, RouterDelta):
        delta = load_router_delta(delta)
    adapter = adapter_for(model)
    for key in ("model_type", "num_experts", "top_k", "hidden_size"):
        want = getattr(adapter, key)
        if delta.meta.get(key) != want:
            raise TierwiseError(f"router delta was trained for {key}={delta.meta.get(key)!r}, but this model has {want!r}")
    names = adapter.router_param_names()
    if sorted(names) != sorted(delta.tensors):
        missing = sorted(set(names) - set(delta.tensors))
        extra = sorted(set(delta.tensors) - set(names))
        raise TierwiseError(f"router delta does not match the model's routers (missing {missing}, unexpected {extra})")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            params[name].copy_(delta.tensors[name].to(params[name].dtype))
    return model


def write_patched_checkpoint(base: str, delta: str | Path, out: str | Path) -> Path:
    """Load `base`, apply the delta, save the full checkpoint (and tokenizer, when the base has one) to `out`."""
    from tierwise.remoe.models.adapters import load_model

    router_delta = load_router_delta(delta)  # fail on a bad delta before the (slow) model load
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TierwiseError(f"output folder {out} exists and is not empty; choose a new folder")
    model, tokenizer = load_model(base, dtype="auto")  # keep the base's storage dtype
    apply_router_delta(model, router_delta)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
