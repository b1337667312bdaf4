"""Hugging Face MoE checkpoint -> GGUF (llama.cpp / Ollama), and router patching of a GGUF file.

ReMoE changes only the gates, so deploying a fine-tuned router to llama.cpp means replacing the tensors
`blk.N.ffn_gate_inp.weight` of a GGUF and nothing else (design remoe.md §7). `export_gguf` writes a complete F32
GGUF of a supported tiny/embedded model with llama.cpp's tensor names and metadata keys; `patch_router` copies a
router delta into an existing GGUF, leaving every other tensor and key byte-identical.

Tensor layout (numpy shapes; ggml's `ne` is the reverse):
    ffn_gate_inp      (E, H)       the router, from mlp.gate.weight
    ffn_gate_exps     (E, I, H)    gate_up_proj[:, :I]      ffn_up_exps (E, I, H) = gate_up_proj[:, I:]
    ffn_down_exps     (E, H, I)    down_proj
Architectures map to llama.cpp's: deepseek_v2/v3 -> deepseek2 (MLA split into attn_k_b / attn_v_b as llama.cpp's
converter does), qwen2_moe -> qwen2moe, qwen3_moe -> qwen3moe, olmoe -> olmoe, mixtral -> llama (q/k rows
permuted from HF's half-split rotary layout to llama.cpp's interleaved one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tierwise.common.errors import TierwiseError
from tierwise.common.progress import track
from tierwise.remoe.models.adapters import adapter_for, load_model


@dataclass(frozen=True)
class GGUFArch:
    name: str  # llama.cpp's architecture string
    renormalises: bool | None  # what llama.cpp's graph does with top-k weights (None: read from expert_weights_norm)
    dense_layers: bool  # whether llama.cpp can hold dense (non-MoE) leading layers for this architecture
    permute_qk: bool  # HF half-split rotary -> llama.cpp interleaved rotary


GGUF_ARCHS: dict[str, GGUFArch] = {
    "deepseek_v2": GGUFArch("deepseek2", None, True, False),
    "deepseek_v3": GGUFArch("deepseek2", None, True, False),
    "qwen2_moe": GGUFArch("qwen2moe", False, False, False),
    "qwen3_moe": GGUFArch("qwen3moe", True, False, False),
    "olmoe": GGUFArch("olmoe", False, False, False),
    "mixtral": GGUFArch("llama", True, False, True),
}
ROUTER_TENSOR = "blk.{layer}.ffn_gate_inp.weight"
# llama.cpp reads deepseek2's q_lora_rank unless the model has DeepSeek-V2-Lite's 27 layers (its "lite" test), so a
# smaller model without q_lora is padded to 27 layers with all-zero blocks: each adds exactly 0 to the residual stream.
LITE_LAYERS = 27
PADDING_KEY = "tierwise.padding_layers"


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise TierwiseError("GGUF export needs the `gguf` package (pip install 'tierwise[remoe]')") from e
    return gguf


def _arch(model) -> GGUFArch:
    model_type = model.config.model_type
    if model_type not in GGUF_ARCHS:
        raise TierwiseError(f"no GGUF mapping for {model_type!r}; supported: {', '.join(GGUF_ARCHS)}")
    return GGUF_ARCHS[model_type]


def _permute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder each head's rows from HF's [first half | second half] rotary layout to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _tensors(model, arch: GGUFArch, gguf_mod) -> dict[str, np.ndarray]:
    """Every tensor of the model under its llama.cpp name, as float32 numpy arrays."""
    config = model.config
    adapter = adapter_for(model)
    n_layers = config.num_hidden_layers
    arch_enum = next(k for k, v in gguf_mod.MODEL_ARCH_NAMES.items() if v == arch.name)
    name_map = gguf_mod.get_tensor_name_map(arch_enum, n_layers)
    out: dict[str, np.ndarray] = {}
    for hf_name, tensor in model.state_dict().items():
        t = tensor.detach().float()
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp falls back to token_embd when `output` is absent
        parts = hf_name.split(".")
        layer = int(parts[2]) if parts[:2] == ["model", "layers"] else None
        if hf_name.endswith("mlp.experts.gate_up_proj"):
            inter = t.shape[1] // 2
            out[f"blk.{layer}.ffn_gate_exps.weight"] = t[:, :inter].numpy()
            out[f"blk.{layer}.ffn_up_exps.weight"] = t[:, inter:].numpy()
            continue
        if hf_name.endswith("mlp.experts.down_proj"):
            out[f"blk.{layer}.ffn_down_exps.weight"] = t.numpy()
            continue
        if hf_name.endswith("mlp.gate.e_score_correction_bias"):
            out[f"blk.{layer}.exp_probs_b.bias"] = t.numpy()
            continue
        if hf_name.endswith("self_attn.kv_b_proj.weight"):
            # MLA absorption form: per head, k_b^T (kv_lora_rank x nope) and v_b (v_head_dim x kv_lora_rank).
            n_head, nope, v_dim = config.num_attention_heads, config.qk_nope_head_dim, config.v_head_dim
            kv_b = t.reshape(n_head, nope + v_dim, t.shape[-1])
            k_b, v_b = kv_b.split([nope, v_dim], dim=1)
            out[f"blk.{layer}.attn_k_b.weight"] = k_b.transpose(1, 2).contiguous().numpy()
            out[f"blk.{layer}.attn_v_b.weight"] = v_b.contiguous().numpy()
            continue
        if arch.permute_qk and hf_name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
            t = _permute_rotary(t, heads)
        if layer is not None and layer not in adapter.moe_layers and ".mlp." in hf_name and not arch.dense_layers:
            raise TierwiseError(
                f"layer {layer} of this {config.model_type} model is dense, which llama.cpp's {arch.name} cannot hold; "
                f"only all-MoE {config.model_type} models can be exported"
            )
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise TierwiseError(f"no llama.cpp tensor name for {hf_name!r} ({config.model_type})")
        out[gguf_name] = t.numpy()
    return out


def _padding_layers(model, arch: GGUFArch) -> int:
    config = model.config
    if arch.name != "deepseek2" or config.q_lora_rank:
        return 0
    if config.num_hidden_layers > LITE_LAYERS:
        raise TierwiseError(f"llama.cpp cannot load a deepseek2 model of {config.num_hidden_layers} layers without q_lora_rank")
    return LITE_LAYERS - config.num_hidden_layers


def _pad_with_null_layers(tensors: dict[str, np.ndarray], n_layers: int, padding: int) -> None:
    """Append `padding` blocks shaped like the last one, all zeros: attention and FFN outputs vanish."""
    last = f"blk.{n_layers - 1}."
    template = {name[len(last):]: t for name, t in tensors.items() if name.startswith(last)}
    for layer in range(n_layers, n_layers + padding):
        for suffix, t in template.items():
            tensors[f"blk.{layer}.{suffix}"] = np.zeros_like(t)


def _write_hparams(w, model, arch: GGUFArch, gguf_mod, padding: int) -> None:
    config = model.config
    adapter = adapter_for(model)
    if arch.renormalises is not None and arch.renormalises != adapter.norm_topk_prob:
        raise TierwiseError(
            f"llama.cpp's {arch.name} {'always' if arch.renormalises else 'never'} renormalises the top-k weights, "
            f"but this model has norm_topk_prob={adapter.norm_topk_prob}"
        )
    experts = adapter.experts(adapter.moe_layers[0])
    w.add_vocab_size(config.vocab_size)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers + padding)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_freq_base(_rope_theta(config))
    w.add_expert_count(adapter.num_experts)
    w.add_expert_used_count(adapter.top_k)
    w.add_expert_feed_forward_length(int(experts.down_proj.shape[2]))
    w.add_file_type(gguf_mod.LlamaFileType.ALL_F32)
    if arch.name == "olmoe" and config.num_key_value_heads != config.num_attention_heads:
        raise TierwiseError("llama.cpp's olmoe has no grouped-query attention (k_norm spans all heads); "
                            f"this model has {config.num_key_value_heads} KV heads for {config.num_attention_heads} query heads")
    if arch.name == "deepseek2":
        w.add_head_count_kv(1)  # MLA runs as MQA over the compressed KV in llama.cpp
        w.add_leading_dense_block_count(config.first_k_dense_replace)
        if config.q_lora_rank:
            w.add_q_lora_rank(config.q_lora_rank)
        w.add_kv_lora_rank(config.kv_lora_rank)
        w.add_key_length(config.kv_lora_rank + config.qk_rope_head_dim)
        w.add_value_length(config.kv_lora_rank)
        w.add_key_length_mla(config.qk_nope_head_dim + config.qk_rope_head_dim)
        w.add_value_length_mla(config.v_head_dim)
        w.add_rope_dimension_count(config.qk_rope_head_dim)
        w.add_expert_shared_count(adapter.num_shared_experts)
        w.add_expert_weights_scale(float(config.routed_scaling_factor))
        w.add_expert_weights_norm(adapter.norm_topk_prob)
        w.add_expert_gating_func(gguf_mod.ExpertGatingFuncType.SIGMOID if adapter.scoring == "sigmoid"
                                 else gguf_mod.ExpertGatingFuncType.SOFTMAX)
        if adapter.n_group:
            w.add_expert_group_count(adapter.n_group)
            w.add_expert_group_used_count(adapter.topk_group)
        return
    w.add_head_count_kv(config.num_key_value_heads)
    head_dim = getattr(config, "head_dim", None)
    if head_dim:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch.name == "qwen2moe":
        w.add_expert_shared_feed_forward_length(config.shared_expert_intermediate_size)
    if arch.name == "llama":
        w.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    if arch.name == "qwen3moe":
        w.add_expert_weights_norm(adapter.norm_topk_prob)


def _write_tokenizer(w, tokenizer, vocab_size: int, gguf_mod) -> None:
    """A byte-level BPE tokenizer as llama.cpp's `gpt2` vocabulary (tokens, types, merges, special ids)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise TierwiseError(f"only byte-level BPE tokenizers can be exported to GGUF, not {model.get('type')!r}")
    by_id = {i: tok for tok, i in model["vocab"].items()}
    special = {}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        special[added["id"]] = gguf_mod.TokenType.CONTROL if added.get("special") else gguf_mod.TokenType.USER_DEFINED
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(special.get(i, gguf_mod.TokenType.NORMAL))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf_mod.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if not merges:
        # llama.cpp requires a merges list; a merge of two control tokens never applies (they are split off first).
        controls = [tokens[i] for i, kind in special.items() if kind == gguf_mod.TokenType.CONTROL]
        if len(controls) < 2:
            raise TierwiseError("a tokenizer without merges needs two special tokens to export to GGUF")
        merges = [f"{controls[0]} {controls[1]}"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_merges(merges)
    if tokenizer.bos_token_id is not None:
        w.add_bos_token_id(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is not None:
        w.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_add_bos_token(False)
    if getattr(tokenizer, "chat_template", None):
        w.add_chat_template(tokenizer.chat_template)


def export_gguf(model, tokenizer, out_path: str | Path, *, name: str = "tierwise-moe") -> Path:
    """Write `model` (a loaded supported MoE causal LM) and its tokenizer as an F32 GGUF file."""
    gguf_mod = _gguf()
    if tokenizer is None:
        raise TierwiseError("GGUF export needs the model's tokenizer (llama.cpp files carry their vocabulary)")
    arch = _arch(model)
    tensors = _tensors(model, arch, gguf_mod)
    padding = _padding_layers(model, arch)
    _pad_with_null_layers(tensors, model.config.num_hidden_layers, padding)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf_mod.GGUFWriter(str(out_path), arch.name)
    w.add_name(name)
    if padding:
        w.add_uint32(PADDING_KEY, padding)
    _write_hparams(w, model, arch, gguf_mod, padding)
    _write_tokenizer(w, tokenizer, model.config.vocab_size, gguf_mod)
    _write_tensors(w, {tensor_name: (np.ascontiguousarray(array, dtype=np.float32), None)
                       for tensor_name, array in tensors.items()}, "GGUF tensors")
    return out_path


def _write_tensors(w, tensors: dict[str, tuple[np.ndarray, object]], description: str) -> None:
    """Finish the GGUF of writer `w` (keys already added) with `tensors` (name -> (data, raw GGML type or None)),
    one tensor at a time under a progress bar: the header, keys and tensor table first, then each tensor's bytes."""
    for name, (data, raw_dtype) in tensors.items():
        w.add_tensor_info(name, data.shape, data.dtype, data.nbytes, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for data, _ in track(list(tensors.values()), description):
        w.write_tensor_data(data)
    w.close()


def export_checkpoint(name_or_path: str | Path, out_path: str | Path, *, router: str | Path | None = None) -> Path:
    """`tierwise remoe export-gguf`: load a checkpoint (optionally with a fine-tuned router) and export it."""
    from tierwise.remoe.export.delta import apply_router_delta

    model, tokenizer = load_model(name_or_path)
    if router is not None:
        apply_router_delta(model, router)
    return export_gguf(model, tokenizer, out_path, name=Path(str(name_or_path)).name)


def read_gguf(path: str | Path):
    """A `gguf.GGUFReader` over `path`, with a clean error for files that are not GGUF."""
    gguf_mod = _gguf()
    path = Path(path)
    if not path.is_file():
        raise TierwiseError(f"GGUF file not found: {path}")
    try:
        return gguf_mod.GGUFReader(str(path))
    except (ValueError, OSError, IndexError) as e:
        raise TierwiseError(f"{path}: not a readable GGUF file ({e})") from e


def _file_arch(reader) -> str:
    field = reader.fields.get("general.architecture")
    if field is None:
        raise TierwiseError("GGUF file has no general.architecture key")
    return bytes(field.parts[field.data[0]]).decode()


def _router_tensors(reader) -> dict:
    """The router tensor (`blk.N.ffn_gate_inp.weight`) of every real block N, by N; the all-zero padding blocks of
    a tierwise export keep their (zero) routers and are left out."""
    routers = {int(t.name.split(".")[1]): t for t in reader.tensors
               if t.name.startswith("blk.") and t.name.endswith(".ffn_gate_inp.weight")}
    if PADDING_KEY in reader.fields:
        blocks = int(reader.fields[f"{_file_arch(reader)}.block_count"].contents())
        first_pad = blocks - int(reader.fields[PADDING_KEY].contents())
        routers = {layer: t for layer, t in routers.items() if layer < first_pad}
    return routers


def patch_router(in_gguf: str | Path, delta, out_gguf: str | Path) -> Path:
    """Copy `in_gguf` to `out_gguf` with every `blk.N.ffn_gate_inp.weight` replaced by the delta's gate of layer N.

    `delta`: a RouterDelta or a path to one. Every other tensor and key is copied unchanged; the delta must cover
    exactly the router tensors of the file, with the same shapes.
    """
    from tierwise.remoe.export.delta import RouterDelta, load_router_delta

    gguf_mod = _gguf()
    delta = delta if isinstance(delta, RouterDelta) else load_router_delta(delta)
    gates = {ROUTER_TENSOR.format(layer=layer): t for layer, t in delta.by_layer().items()}
    reader = read_gguf(in_gguf)
    arch = _file_arch(reader)
    routers = {ROUTER_TENSOR.format(layer=layer): t for layer, t in _router_tensors(reader).items()}
    if set(routers) != set(gates):
        raise TierwiseError(f"router delta covers {sorted(gates)} but {in_gguf} has router tensors {sorted(routers)}")
    w = gguf_mod.GGUFWriter(str(out_gguf), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # the writer emits the header fields and the architecture itself
        value = field.contents()
        sub_type = field.types[1] if field.types[0] == gguf_mod.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, field.types[0], sub_type=sub_type)
    tensors = {}
    for t in reader.tensors:
        data = np.asarray(t.data)
        if t.name in gates:
            if t.tensor_type != gguf_mod.GGMLQuantizationType.F32 and t.tensor_type != gguf_mod.GGMLQuantizationType.F16:
                raise TierwiseError(f"{t.name} is stored as {t.tensor_type.name}; only F32/F16 routers can be patched")
            new = gates[t.name].float().numpy().astype(data.dtype)
            if new.shape != data.shape:
                raise TierwiseError(f"{t.name}: delta shape {new.shape} differs from the file's {data.shape}")
            data = new
        tensors[t.name] = (data, t.tensor_type)  # quantized bytes keep their type and logical shape
    _write_tensors(w, tensors, "GGUF tensors")
    return Path(out_gguf)


def import_router(gguf_path: str | Path, model: str | Path, out: str | Path) -> Path:
    """`tierwise remoe import-gguf-router`: the routers of a GGUF (e.g. the authors' DeepSeek-V2-Lite-Chat-ReMoE) as
    a router delta for the HF checkpoint `model`, so every command here can run the file's routing.

    Only `model`'s config is read (its modules are built on the meta device), so this costs no weights in memory.
    The file must hold one router per MoE layer of `model`, each (E, H); quantized routers are dequantized.
    """
    from tierwise.remoe.export.delta import layer_index, save_router_delta
    from tierwise.remoe.models.adapters import load_skeleton

    gguf_mod = _gguf()
    reader = read_gguf(gguf_path)
    skeleton = load_skeleton(model)
    adapter = adapter_for(skeleton)
    arch = _file_arch(reader)
    want_arch = GGUF_ARCHS.get(adapter.model_type)
    if want_arch is not None and want_arch.name != arch:
        raise TierwiseError(f"{gguf_path} is a {arch!r} GGUF, but {model} is {adapter.model_type} ({want_arch.name!r} in GGUF)")
    for key, want in (("expert_count", adapter.num_experts), ("expert_used_count", adapter.top_k)):
        field = reader.fields.get(f"{arch}.{key}")
        if field is not None and int(field.contents()) != want:
            raise TierwiseError(f"{gguf_path}: {arch}.{key} = {field.contents()}, but {model} has {want}")
    names = {layer_index(name): name for name in adapter.router_param_names()}
    routers = _router_tensors(reader)
    if set(routers) != set(names):
        raise TierwiseError(f"{gguf_path} has routers for blocks {sorted(routers)}, but {model} has MoE layers {sorted(names)}")
    state = {}
    for layer, t in routers.items():
        data = np.asarray(t.data)
        if t.tensor_type not in (gguf_mod.GGMLQuantizationType.F32, gguf_mod.GGMLQuantizationType.F16):
            data = gguf_mod.quants.dequantize(data, t.tensor_type)
        gate = torch.tensor(np.asarray(data, dtype=np.float32))  # a copy: the reader maps the file read-only
        if tuple(gate.shape) != (adapter.num_experts, adapter.hidden_size):
            raise TierwiseError(f"{t.name}: shape {tuple(gate.shape)}, expected ({adapter.num_experts}, {adapter.hidden_size})")
        if not torch.isfinite(gate).all():
            raise TierwiseError(f"{t.name} holds non-finite values")
        state[names[layer]] = gate
    return save_router_delta(skeleton, out, state_dict=state, base_model=str(model), source_gguf=str(gguf_path))
