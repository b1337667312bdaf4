"""Hugging Face MoE checkpoints behind one small adapter.

transformers 5.x lays out every supported MoE block the same way: `layer.mlp.gate` is a *TopKRouter whose forward
returns (router_logits [T,E], topk_weights [T,K], topk_indices [T,K]) and `layer.mlp.experts` holds fused
`gate_up_proj` (E, 2I, H) and `down_proj` (E, H, I). What differs per architecture (scoring, shared experts,
renormalisation, dense layers, grouped top-k) lives in one small `ArchSpec` table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tierwise.common.errors import TierwiseError

# Byte-level tokenizer of the tiny models: 256 byte tokens plus these specials.
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")
TINY_VOCAB_SIZE = 320

_TINY_COMMON: dict[str, Any] = dict(
    vocab_size=TINY_VOCAB_SIZE,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=None,
    eos_token_id=256,
    pad_token_id=257,
    tie_word_embeddings=False,
)


def _deepseek_layer(config, i: int) -> bool:
    return i >= (config.first_k_dense_replace or 0)


def _qwen_layer(config, i: int) -> bool:
    return (i not in (config.mlp_only_layers or [])) and config.num_experts > 0 and (i + 1) % config.decoder_sparse_step == 0


def _every_layer(config, i: int) -> bool:
    return True


def _config_norm(config) -> bool:
    return bool(config.norm_topk_prob)


def _no_groups(config) -> None:
    return None


def _no_shared(config) -> int:
    return 0


@dataclass(frozen=True)
class ArchSpec:
    """What one architecture's transformers implementation does, read off its modeling file."""

    tiny: dict[str, Any]  # structural features of the real model at tiny sizes
    scoring: str = "softmax"  # how router logits become scores before top-k: 'softmax' | 'sigmoid'
    num_shared_experts: Callable[[Any], int] = _no_shared
    norm_topk_prob: Callable[[Any], bool] = _config_norm  # whether the implementation renormalises top-k weights
    is_moe_layer: Callable[[Any, int], bool] = _every_layer  # the modeling file's layer rule (dense layers -> False)
    groups: Callable[[Any], tuple[int, int] | None] = _no_groups  # (n_group, topk_group) of grouped top-k


_DEEPSEEK_ATTN = dict(kv_lora_rank=16, q_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                      num_key_value_heads=4)  # MLA: one KV head per query head, or the forward fails

ARCHS: dict[str, ArchSpec] = {
    # DeepSeek-V2(-Lite): softmax, greedy top-k (group_limited_greedy for the full V2), 2 shared experts, dense layer 0.
    # The 5.24 router never renormalises top-k weights whatever norm_topk_prob says.
    "deepseek_v2": ArchSpec(
        num_shared_experts=lambda c: int(c.n_shared_experts or 0),
        norm_topk_prob=lambda c: False,
        is_moe_layer=_deepseek_layer,
        groups=lambda c: (c.n_group, c.topk_group) if c.topk_method == "group_limited_greedy" else None,
        tiny=dict(_DEEPSEEK_ATTN, q_lora_rank=None, n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=2,
                  moe_intermediate_size=16, first_k_dense_replace=1, topk_method="greedy", routed_scaling_factor=1.0),
    ),
    # DeepSeek-V3: sigmoid scores + e_score_correction_bias, grouped top-k (n_group / topk_group), renormalised.
    "deepseek_v3": ArchSpec(
        scoring="sigmoid",
        num_shared_experts=lambda c: int(c.n_shared_experts or 0),
        is_moe_layer=_deepseek_layer,
        groups=lambda c: (c.n_group, c.topk_group),
        tiny=dict(_DEEPSEEK_ATTN, n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1, moe_intermediate_size=16,
                  first_k_dense_replace=1, n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5),
    ),
    # Qwen1.5-MoE: one shared expert scaled by its own sigmoid gate, top-k weights NOT renormalised.
    "qwen2_moe": ArchSpec(
        num_shared_experts=lambda c: 1 if (c.shared_expert_intermediate_size or 0) > 0 else 0,
        is_moe_layer=_qwen_layer,
        tiny=dict(num_experts=12, num_experts_per_tok=4, moe_intermediate_size=16, shared_expert_intermediate_size=64,
                  norm_topk_prob=False, mlp_only_layers=[0], decoder_sparse_step=1),
    ),
    # Qwen3-MoE: no shared expert, renormalised top-k.
    "qwen3_moe": ArchSpec(
        is_moe_layer=_qwen_layer,
        tiny=dict(num_experts=16, num_experts_per_tok=4, moe_intermediate_size=16, norm_topk_prob=True, head_dim=8,
                  mlp_only_layers=[0], decoder_sparse_step=1),
    ),
    # OLMoE: MoE in every layer, no shared expert, no renormalisation.
    "olmoe": ArchSpec(tiny=dict(num_experts=16, num_experts_per_tok=4, intermediate_size=16, norm_topk_prob=False)),
    # Mixtral: 8 coarse experts, top-2, always renormalised.
    "mixtral": ArchSpec(
        norm_topk_prob=lambda c: True,
        tiny=dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=32),
    ),
}

SUPPORTED_ARCHS: tuple[str, ...] = tuple(ARCHS)


def arch_spec(model_type: str) -> ArchSpec:
    if model_type not in ARCHS:
        raise TierwiseError(
            f"unsupported MoE architecture {model_type!r}; supported: {', '.join(SUPPORTED_ARCHS)}"
        )
    return ARCHS[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a *ForCausalLM (`model.model.layers` in every supported arch)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise TierwiseError(f"{type(model).__name__} has no decoder layers at .model.layers; is it a causal LM?")
    return layers


class MoEAdapter:
    """Uniform view of one loaded MoE model: which layers route, E, K, routers, fused expert tensors.

    Layer arguments are decoder-layer indices (as in `moe_layers`), not positions within `moe_layers`.
    """

    def __init__(self, model: nn.Module):
        config = model.config
        self.model = model
        self.model_type: str = config.model_type
        spec = arch_spec(self.model_type)
        self._layers = decoder_layers(model)
        self.moe_layers: tuple[int, ...] = tuple(
            i for i, layer in enumerate(self._layers) if hasattr(layer.mlp, "gate") and hasattr(layer.mlp, "experts")
        )
        expected = tuple(i for i in range(len(self._layers)) if spec.is_moe_layer(config, i))
        if self.moe_layers != expected:
            raise TierwiseError(
                f"{self.model_type}: MoE blocks found at layers {list(self.moe_layers)} but the config says {list(expected)}"
            )
        if not self.moe_layers:
            raise TierwiseError(f"{self.model_type} model has no MoE layers (all dense)")
        first = self.router(self.moe_layers[0])
        self.num_experts: int = int(first.num_experts)
        self.top_k: int = int(first.top_k)
        self.num_shared_experts: int = spec.num_shared_experts(config)
        self.scoring: str = spec.scoring
        self.norm_topk_prob: bool = spec.norm_topk_prob(config)
        groups = spec.groups(config)
        self.n_group, self.topk_group = groups if groups is not None else (None, None)
        experts = self.experts(self.moe_layers[0])
        self.hidden_size: int = int(experts.gate_up_proj.shape[2])
        self.expert_intermediate_size: int = int(experts.down_proj.shape[2])
        # One routed expert = its slice of both fused tensors.
        self.expert_bytes: int = sum(
            t[0].numel() * t.element_size() for t in (experts.gate_up_proj, experts.down_proj)
        )

    def _moe_block(self, layer: int) -> nn.Module:
        if layer not in self.moe_layers:
            raise TierwiseError(f"layer {layer} is not an MoE layer; MoE layers: {list(self.moe_layers)}")
        return self._layers[layer].mlp

    def router(self, layer: int) -> nn.Module:
        """The `mlp.gate` module; its forward returns (router_logits, topk_weights, topk_indices)."""
        return self._moe_block(layer).gate

    def router_weight(self, layer: int) -> nn.Parameter:
        """The (E, H) gate matrix W_g."""
        return self.router(layer).weight

    def router_param_names(self) -> list[str]:
        """Fully qualified names of every router weight (what ReMoE trains)."""
        names = {id(self.router_weight(i)): None for i in self.moe_layers}
        return [n for n, p in self.model.named_parameters() if id(p) in names]

    def experts(self, layer: int) -> nn.Module:
        """The fused experts module (`gate_up_proj` (E, 2I, H), `down_proj` (E, H, I))."""
        return self._moe_block(layer).experts

    def expert_weights(self, layer: int, e: int) -> dict[str, torch.Tensor]:
        """Views of one routed expert's weights: gate_proj (I, H), up_proj (I, H), down_proj (H, I)."""
        if not 0 <= e < self.num_experts:
            raise TierwiseError(f"expert {e} out of range 0..{self.num_experts - 1}")
        experts = self.experts(layer)
        inter = self.expert_intermediate_size
        gate_up = experts.gate_up_proj[e]
        return {"gate_proj": gate_up[:inter], "up_proj": gate_up[inter:], "down_proj": experts.down_proj[e]}

    def describe(self) -> dict[str, Any]:
        """The adapter's facts as plain values (for reports and trace metadata)."""
        return {
            "model_type": self.model_type,
            "moe_layers": list(self.moe_layers),
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "num_shared_experts": self.num_shared_experts,
            "scoring": self.scoring,
            "norm_topk_prob": self.norm_topk_prob,
            "n_group": self.n_group,
            "topk_group": self.topk_group,
            "expert_bytes": self.expert_bytes,
        }


def adapter_for(model: nn.Module) -> MoEAdapter:
    return MoEAdapter(model)


def tiny_config(arch: str, **overrides):
    """A tiny config of `arch` keeping its real structural features (see ARCHS[arch].tiny)."""
    from transformers import AutoConfig

    spec = arch_spec(arch)
    kwargs = {**_TINY_COMMON, **spec.tiny, **overrides}
    return AutoConfig.for_model(arch, **kwargs)


def tiny_model(arch: str, *, seed: int = 0, **config_overrides) -> nn.Module:
    """A tiny random model of `arch`, built offline from a config, in eval mode."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if arch == "deepseek_v3":
        # A non-zero correction bias, so tests exercise that selection uses scores + bias (weights use scores).
        for i in adapter_for(model).moe_layers:
            gate = decoder_layers(model)[i].mlp.gate
            gate.e_score_correction_bias.copy_(0.05 * torch.randn(gate.num_experts))
    return model.eval()


def tiny_tokenizer():
    """A byte-level tokenizer for tiny models: every UTF-8 byte is a token, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for tok in TINY_SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=TINY_SPECIAL_TOKENS[0], pad_token=TINY_SPECIAL_TOKENS[1])


def save_tiny(arch: str, out_dir: str | Path, *, seed: int = 0, **config_overrides) -> Path:
    """Write a tiny random `arch` model plus the byte-level tokenizer as a loadable checkpoint folder."""
    out_dir = Path(out_dir)
    tiny_model(arch, seed=seed, **config_overrides).save_pretrained(out_dir)
    tiny_tokenizer().save_pretrained(out_dir)
    return out_dir


def _resolve(name_or_path: str) -> str:
    if name_or_path == "embedded":
        try:
            from tierwise.remoe.models import embedded
        except ImportError as e:
            raise TierwiseError(
                f"the embedded checkpoint is not available in this installation (tierwise.remoe.models.embedded: {e})"
            ) from e
        return str(embedded.model_dir())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TierwiseError(f"{path} is not a Hugging Face checkpoint folder (no config.json)")
        return str(path)
    return name_or_path  # a hub id; resolved (or refused when offline) by transformers


def load_config(name_or_path: str | Path, **hf_kwargs):
    """The HF config of a supported MoE checkpoint (`embedded`, a folder or a hub id); unsupported ones are refused."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(_resolve(str(name_or_path)), **hf_kwargs)
    except (OSError, ValueError) as e:
        raise TierwiseError(f"cannot load a model config from {name_or_path!r}: {e}") from e
    arch_spec(config.model_type)
    return config


def load_skeleton(name_or_path: str | Path, **hf_kwargs) -> nn.Module:
    """The model's modules on the meta device, without weights: parameter names and shapes (e.g. of the routers)
    of a checkpoint of any size, at no memory cost."""
    from transformers import AutoModelForCausalLM

    config = load_config(name_or_path, **hf_kwargs)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_model(name_or_path: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
               **hf_kwargs):
    """Load a supported MoE causal LM and its tokenizer (None when the checkpoint has none), in eval mode.

    `name_or_path`: a local checkpoint folder, a Hugging Face hub id (when online), or `embedded`.
    `device`: where the model goes once loaded (None: stays on the CPU, where it is loaded).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _resolve(str(name_or_path))
    load_config(name_or_path, **hf_kwargs)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **hf_kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise TierwiseError(f"cannot load model weights from {name_or_path!r}: {e}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **hf_kwargs)
    except (OSError, ValueError, TypeError):
        tokenizer = None  # a weights-only checkpoint; callers that need text say so
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def checkpoint_dir(name_or_path: str | Path) -> Path:
    """The folder holding a checkpoint's files: a local folder, the embedded model's, or a hub snapshot (online)."""
    source = _resolve(str(name_or_path))
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source))
    except Exception as e:  # hub errors have no common base class beyond Exception (offline, unknown repo, auth)
        raise TierwiseError(f"cannot fetch the checkpoint files of {name_or_path!r}: {e}") from e
