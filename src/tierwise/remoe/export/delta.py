"""Router-only deltas: the fine-tuned gate matrices of a model, and nothing else, as one safetensors file.

A delta maps each router parameter's full name (e.g. `model.layers.3.mlp.gate.weight`) to its new (E, H)
float32 matrix: the complete replacement weights, not a difference, so applying it is a copy. The header
metadata records the architecture, E, K, hidden size and MoE layers, which `apply_router_delta` checks
against the target model before touching anything.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.adapters import MoEAdapter, adapter_for

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

    `state_dict`: a state dict to take the gates from instead of the module's own parameters (e.g. of a
    meta-device skeleton).
    """
    if state_dict is None:
        tensors = router_state(model)
    else:
        tensors = {n: state_dict[n] for n in adapter_for(model).router_param_names()}
    return write_router_delta(tensors, delta_meta(model, **extra_meta), path)


def write_router_delta(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: str | Path) -> Path:
    """Write gate matrices (stored float32) with `delta_meta`-style facts as a delta file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = {n: t.detach().float().cpu().contiguous() for n, t in tensors.items()}
    save_file(stored, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})
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


def check_router_delta(adapter: MoEAdapter, delta: RouterDelta) -> None:
    """Refuse a delta trained for another model: architecture, E, K, H and the router names must all match."""
    for key in ("model_type", "num_experts", "top_k", "hidden_size"):
        want = getattr(adapter, key)
        if delta.meta.get(key) != want:
            raise TierwiseError(f"router delta was trained for {key}={delta.meta.get(key)!r}, but this model has {want!r}")
    names = adapter.router_param_names()
    if sorted(names) != sorted(delta.tensors):
        missing = sorted(set(names) - set(delta.tensors))
        extra = sorted(set(delta.tensors) - set(names))
        raise TierwiseError(f"router delta does not match the model's routers (missing {missing}, unexpected {extra})")


def apply_router_delta(model: nn.Module, delta: RouterDelta | str | Path) -> nn.Module:
    """Copy the delta's gate matrices into `model` in place (all or nothing) and return it."""
    if not isinstance(delta, RouterDelta):
        delta = load_router_delta(delta)
    check_router_delta(adapter_for(model), delta)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in delta.tensors:
            params[name].copy_(delta.tensors[name].to(params[name].dtype))
    return model


def write_patched_checkpoint(base: str, delta: str | Path, out: str | Path) -> Path:
    """BASE's checkpoint files, with its router tensors replaced by the delta's, written to `out`.

    The files are copied rather than re-saved from a loaded model, so every tensor keeps its stored dtype and every
    tensor but the routers its bytes: a model loaded in one dtype and saved would store *every* tensor in that
    dtype (the embedded model keeps bf16 weights beside fp32 routers; it would come out twice its size). Each router
    is written in the dtype the base stored it in.
    """
    from tierwise.remoe.models.adapters import checkpoint_dir, load_skeleton

    router_delta = load_router_delta(delta)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TierwiseError(f"output folder {out} exists and is not empty; choose a new folder")
    skeleton = load_skeleton(base)  # names and shapes only: the check costs no memory at any model size
    check_router_delta(adapter_for(skeleton), router_delta)
    source = checkpoint_dir(base)
    shards = sorted(source.glob("*.safetensors"))
    if not shards:
        raise TierwiseError(f"{source} holds no .safetensors files; apply-router copies safetensors checkpoints "
                            "(re-save the model with save_pretrained to get one)")
    keys = _router_keys(skeleton, shards)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.suffix == ".safetensors":
            _patch_shard(path, tmp / path.name, {k: router_delta.tensors[n] for k, n in keys.items()})
        elif path.is_file():
            shutil.copy2(path, tmp / path.name)  # config, tokenizer, shard index: unchanged
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)  # a failure part-way leaves no half-written checkpoint under the requested name
    return out


def _router_keys(skeleton: nn.Module, shards: list[Path]) -> dict[str, str]:
    """Checkpoint key -> router parameter name. Keys are renamed as transformers renames them when it loads the
    checkpoint (an original Mixtral file stores `block_sparse_moe.gate`, the model has `mlp.gate`)."""
    from safetensors import safe_open
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(skeleton)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    names = set(adapter_for(skeleton).router_param_names())
    params = dict(skeleton.named_parameters())
    keys = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                renamed, converted = (key, None) if key in names else rename_source_key(key, renamings, converters)
                if renamed in names and converted is None:
                    if tuple(f.get_slice(key).get_shape()) != tuple(params[renamed].shape):
                        raise TierwiseError(f"{shard}: {key} has shape {f.get_slice(key).get_shape()}, the model's "
                                            f"{renamed} {tuple(params[renamed].shape)}")
                    keys[key] = renamed
    missing = sorted(names - set(keys.values()))
    if missing:
        raise TierwiseError(f"the checkpoint files hold no tensor for the routers {missing}")
    return keys


def _patch_shard(src: Path, dst: Path, replace: dict[str, torch.Tensor]) -> None:
    """Copy one safetensors file, replacing the tensors in `replace` (cast to the dtype stored in `src`)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        if not replace.keys() & set(f.keys()):
            shutil.copy2(src, dst)
            return
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    for key, new in replace.items():
        if key in tensors:
            tensors[key] = new.to(tensors[key].dtype)
    save_file(tensors, str(dst), metadata=metadata)
