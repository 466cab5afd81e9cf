"""Hugging Face checkpoints in and out: local directories only, no hub access.

A model family is one weight-map function (`config -> [WeightSpec]`, pairing each Hugging Face tensor with a
kipjax parameter path and the layout change in each direction) plus one `FAMILIES` entry. Loading and
exporting are generic over that map. Converters always name per-layer params `layer_{i}`; when the config
sets `scan_layers`, those subtrees are stacked into one `layers` subtree (and unstacked on export). LoRA
adapters (`lora` sub-dicts) have no checkpoint tensors: loading leaves them at their init, exporting refuses them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import linen as nn
from flax import traverse_util

from kipjax.models import layers
from kipjax.models.bert import BertConfig, BertEncoder
from kipjax.models.llama import Llama, LlamaConfig
from kipjax.models.t5 import T5, T5Config

Params = dict[str, Any]
ParamPath = tuple[str, ...]

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
# Names in older (TF-converted) checkpoints.
_LEGACY_SUFFIXES = {".gamma": ".weight", ".beta": ".bias"}
_LAYER_KEY = re.compile(r"layer_(\d+)")


class CheckpointError(ValueError):
    """A checkpoint directory's content does not fit what kipjax expects; the message names the file."""


def _identity(x: Any) -> Any:
    return x


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One Hugging Face tensor <-> one kipjax param; transforms use only array methods (numpy or traced)."""

    hf_name: str
    path: ParamPath
    to_kipjax: Callable[[Any], Any] = _identity
    to_hf: Callable[[Any], Any] = _identity


def linear(hf_name: str, path: ParamPath, bias: bool = True) -> list[WeightSpec]:
    """torch Linear (out, in) weight -> (in, out) kernel; bias unchanged."""
    specs = [WeightSpec(f"{hf_name}.weight", path + ("kernel",), lambda w: w.T, lambda k: k.T)]
    return specs + [WeightSpec(f"{hf_name}.bias", path + ("bias",))] if bias else specs


def heads_projection(hf_name: str, path: ParamPath, num_heads: int, bias: bool = True) -> list[WeightSpec]:
    """torch Linear (heads*kv, embed) -> kernel (embed, heads, kv), bias (heads, kv)."""
    specs = [WeightSpec(f"{hf_name}.weight", path + ("kernel",),
                        lambda w: w.T.reshape(w.shape[1], num_heads, -1),
                        lambda k: k.reshape(k.shape[0], -1).T)]
    return specs + [WeightSpec(f"{hf_name}.bias", path + ("bias",), lambda b: b.reshape(num_heads, -1),
                               lambda b: b.reshape(-1))] if bias else specs


def heads_output(hf_name: str, path: ParamPath, num_heads: int, bias: bool = True) -> list[WeightSpec]:
    """torch Linear (embed, heads*kv) -> kernel (heads, kv, embed); bias unchanged."""
    specs = [WeightSpec(f"{hf_name}.weight", path + ("kernel",),
                        lambda w: w.T.reshape(num_heads, -1, w.shape[0]),
                        lambda k: k.reshape(-1, k.shape[-1]).T)]
    return specs + [WeightSpec(f"{hf_name}.bias", path + ("bias",))] if bias else specs


def layer_norm(hf_name: str, path: ParamPath) -> list[WeightSpec]:
    return [WeightSpec(f"{hf_name}.weight", path + ("scale",)), WeightSpec(f"{hf_name}.bias", path + ("bias",))]


def embedding(hf_name: str, path: ParamPath) -> list[WeightSpec]:
    return [WeightSpec(f"{hf_name}.weight", path + ("embedding",))]


def bert_weights(config: BertConfig) -> list[WeightSpec]:
    """Weight map of transformers' BertModel / RobertaModel / ElectraModel."""
    specs = [*embedding("embeddings.word_embeddings", ("embeddings", "word_embeddings")),
             *embedding("embeddings.position_embeddings", ("embeddings", "position_embeddings")),
             *embedding("embeddings.token_type_embeddings", ("embeddings", "token_type_embeddings")),
             *layer_norm("embeddings.LayerNorm", ("embeddings", "layer_norm"))]
    if config.embed_dim != config.hidden_size:
        specs += linear("embeddings_project", ("embeddings_project",))
    heads = config.num_attention_heads
    for i in range(config.num_hidden_layers):
        src, dst = f"encoder.layer.{i}", (f"layer_{i}",)
        for name in ("query", "key", "value"):
            specs += heads_projection(f"{src}.attention.self.{name}", dst + ("attention", name), heads)
        specs += heads_output(f"{src}.attention.output.dense", dst + ("attention", "out"), heads)
        specs += layer_norm(f"{src}.attention.output.LayerNorm", dst + ("attention_norm",))
        specs += linear(f"{src}.intermediate.dense", dst + ("mlp", "wi"))
        specs += linear(f"{src}.output.dense", dst + ("mlp", "wo"))
        specs += layer_norm(f"{src}.output.LayerNorm", dst + ("output_norm",))
    if config.add_pooler:
        specs += linear("pooler.dense", ("pooler",))
    return specs


def t5_weights(config: T5Config) -> list[WeightSpec]:
    """Weight map of transformers' T5ForConditionalGeneration (T5 v1.0 / v1.1, T0, FLAN-T5)."""
    heads = config.num_heads
    specs = [*embedding("shared", ("shared",))]
    for stack in ("encoder", "decoder"):
        specs.append(WeightSpec(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                                (f"{stack}_position_bias", "embedding")))
        specs.append(WeightSpec(f"{stack}.final_layer_norm.weight", (f"{stack}_norm", "scale")))
        sublayers = (("SelfAttention", "attention"),) if stack == "encoder" else (
            ("SelfAttention", "self_attention"), ("EncDecAttention", "cross_attention"))
        num_layers = config.num_layers if stack == "encoder" else config.decoder_layers
        for i in range(num_layers):
            src, dst = f"{stack}.block.{i}.layer", (f"{stack}_layer_{i}",)
            for j, (hf_attention, attention) in enumerate(sublayers):
                for hf_proj, proj in (("q", "query"), ("k", "key"), ("v", "value")):
                    specs += heads_projection(f"{src}.{j}.{hf_attention}.{hf_proj}", dst + (attention, proj), heads,
                                              bias=False)
                specs += heads_output(f"{src}.{j}.{hf_attention}.o", dst + (attention, "out"), heads, bias=False)
                specs.append(WeightSpec(f"{src}.{j}.layer_norm.weight", dst + (f"{attention}_norm", "scale")))
            mlp = len(sublayers)
            inputs = ("wi_0", "wi_1") if config.is_gated else ("wi",)
            for name in (*inputs, "wo"):
                specs += linear(f"{src}.{mlp}.DenseReluDense.{name}", dst + ("mlp", name), bias=False)
            specs.append(WeightSpec(f"{src}.{mlp}.layer_norm.weight", dst + ("mlp_norm", "scale")))
    if not config.tie_word_embeddings:
        specs += linear("lm_head", ("lm_head",), bias=False)
    return specs


def llama_weights(config: LlamaConfig) -> list[WeightSpec]:
    """Weight map of transformers' LlamaForCausalLM; LoRA adapters have no Hugging Face counterpart."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    specs = [*embedding("model.embed_tokens", ("embed_tokens",)),
             WeightSpec("model.norm.weight", ("final_norm", "scale"))]
    for i in range(config.num_hidden_layers):
        src, dst = f"model.layers.{i}", (f"layer_{i}",)
        for hf_proj, proj, n in (("q", "query", heads), ("k", "key", kv_heads), ("v", "value", kv_heads)):
            specs += heads_projection(f"{src}.self_attn.{hf_proj}_proj", dst + ("attention", proj), n,
                                      bias=config.attention_bias)
        specs += heads_output(f"{src}.self_attn.o_proj", dst + ("attention", "out"), heads, bias=config.attention_bias)
        for name in ("gate", "up", "down"):
            specs += linear(f"{src}.mlp.{name}_proj", dst + ("mlp", name), bias=config.mlp_bias)
        specs.append(WeightSpec(f"{src}.input_layernorm.weight", dst + ("attention_norm", "scale")))
        specs.append(WeightSpec(f"{src}.post_attention_layernorm.weight", dst + ("mlp_norm", "scale")))
    if not config.tie_word_embeddings:
        specs += linear("lm_head", ("lm_head",), bias=False)
    return specs


def _bert_fit_to_weights(config: BertConfig, names: set[str]) -> BertConfig:
    """Masked-LM checkpoints carry no pooler; build the encoder without one rather than fail."""
    return config if "pooler.dense.weight" in names else dataclasses.replace(config, add_pooler=False)


def _t5_fit_to_weights(config: T5Config, names: set[str]) -> T5Config:
    """transformers 5 ties T5's head to the embedding unless the file holds its own `lm_head.weight`, whatever
    `tie_word_embeddings` says (it writes `true` for every T5, v1.1 included); kipjax reads the file the same way."""
    return dataclasses.replace(config, tie_word_embeddings="lm_head.weight" not in names)


def _llama_fit_to_weights(config: LlamaConfig, names: set[str]) -> LlamaConfig:
    """A separate `lm_head.weight` in the file is used, as transformers 5 does even under `tie_word_embeddings`."""
    return dataclasses.replace(config, tie_word_embeddings=False) if "lm_head.weight" in names else config


def _token_inputs(config: Any) -> dict[str, jax.Array]:
    return {"input_ids": jnp.zeros((1, 1), jnp.int32)}


@dataclasses.dataclass(frozen=True)
class Family:
    """How to build one model family from a Hugging Face directory.

    `config_cls` has `from_hf_dict` / `to_hf_dict` and a `model_type` field; `model_cls(config)` is the
    module; `weights(config)` is the converter; `head_prefixes` are stripped from task-model checkpoints;
    `fit_to_weights(config, names)` may adjust the config to the tensors present; `example_inputs(config)`
    are keyword arguments that make `model.init` create every parameter.
    """

    config_cls: type
    model_cls: type[nn.Module]
    weights: Callable[[Any], list[WeightSpec]]
    head_prefixes: tuple[str, ...] = ()
    fit_to_weights: Callable[[Any, set[str]], Any] | None = None
    example_inputs: Callable[[Any], dict[str, jax.Array]] = _token_inputs


FAMILIES: dict[str, Family] = {
    "bert": Family(BertConfig, BertEncoder, bert_weights, ("bert.",), _bert_fit_to_weights),
    "roberta": Family(BertConfig, BertEncoder, bert_weights, ("roberta.",), _bert_fit_to_weights),
    "electra": Family(BertConfig, BertEncoder, bert_weights, ("electra.",)),
    "t5": Family(T5Config, T5, t5_weights, fit_to_weights=_t5_fit_to_weights),
    "llama": Family(LlamaConfig, Llama, llama_weights, fit_to_weights=_llama_fit_to_weights),
}


class _WeightFiles:
    """Lazy name -> numpy access to the weight file(s) of one directory, wherever each tensor lives."""

    def __init__(self, directory: Path, stack: contextlib.ExitStack):
        self._stack = stack
        self._shards: dict[Path, tuple[list[str], Callable[[str], np.ndarray]]] = {}
        for candidate in (SAFETENSORS_FILE, SAFETENSORS_INDEX, TORCH_FILE, TORCH_INDEX):
            self.source = directory / candidate
            if self.source.is_file():
                break
        else:
            raise FileNotFoundError(f"{directory}: no weights; expected one of {SAFETENSORS_FILE}, "
                                    f"{SAFETENSORS_INDEX}, {TORCH_FILE} or {TORCH_INDEX}")
        if self.source.name.endswith(".index.json"):
            weight_map = json.loads(self.source.read_text())["weight_map"]
            self.shard_of = {name: directory / shard for name, shard in weight_map.items()}
        else:
            self.shard_of = dict.fromkeys(self._open(self.source)[0], self.source)

    def _open(self, shard: Path) -> tuple[list[str], Callable[[str], np.ndarray]]:
        if shard not in self._shards:
            if shard.suffix == ".safetensors":
                handle = self._stack.enter_context(safetensors.safe_open(shard, "np"))
                self._shards[shard] = (list(handle.keys()), handle.get_tensor)
            else:
                state_dict = _torch_load(shard)
                self._shards[shard] = (list(state_dict), lambda name: _torch_to_numpy(state_dict[name]))
        return self._shards[shard]

    def read(self, name: str) -> np.ndarray:
        return self._open(self.shard_of[name])[1](name)


def _torch_load(file: Path) -> Mapping[str, Any]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {file} needs torch; install it or convert the weights to safetensors") from e
    # Memory-map where the format allows it (not for pre-1.6 torch archives, which many old BERTs are).
    return torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    """numpy has no bfloat16 for torch to export to; upcasting is exact and params are cast afterwards."""
    import torch
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _canonical_names(names: list[str], head_prefixes: tuple[str, ...]) -> dict[str, str]:
    """Base-model name -> name in the file: task-head prefixes stripped, legacy LayerNorm names updated."""
    canonical = {}
    for name in names:
        base = next((name[len(p):] for p in head_prefixes if name.startswith(p)), name)
        for old, new in _LEGACY_SUFFIXES.items():
            if base.endswith(old):
                base = base[: -len(old)] + new
        canonical.setdefault(base, name)
    return canonical


def stack_layers(tree: Params) -> Params:
    """Replaces `layer_0..layer_{n-1}` subtrees (at any depth) by one `layers` subtree stacked on axis 0."""
    if not isinstance(tree, dict):
        return tree
    out = {k: stack_layers(v) for k, v in tree.items() if not _LAYER_KEY.fullmatch(k)}
    per_layer = sorted((int(_LAYER_KEY.fullmatch(k).group(1)), v) for k, v in tree.items() if _LAYER_KEY.fullmatch(k))
    if per_layer:
        out["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[stack_layers(v) for _, v in per_layer])
    return out


def unstack_layers(tree: Params) -> Params:
    """Inverse of `stack_layers`."""
    if not isinstance(tree, dict):
        return tree
    out = {k: unstack_layers(v) for k, v in tree.items() if k != "layers"}
    if "layers" in tree:
        n = jax.tree_util.tree_leaves(tree["layers"])[0].shape[0]
        for i in range(n):
            out[f"layer_{i}"] = unstack_layers(jax.tree_util.tree_map(lambda x: x[i], tree["layers"]))
    return out


def _per_layer(params: Params, scanned: bool) -> Params:
    """The param tree in the converters' `layer_{i}` layout."""
    return unstack_layers(params) if scanned else params


def _read_config(directory: Path) -> tuple[Family, Any]:
    config_file = directory / CONFIG_FILE
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found; a Hugging Face model directory needs {CONFIG_FILE}")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file}: not valid JSON ({e})") from e
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(f"{config_file}: model_type {model_type!r} is not supported; "
                              f"supported: {sorted(FAMILIES)}")
    family = FAMILIES[model_type]
    try:
        return family, family.config_cls.from_hf_dict(hf_config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{config_file}: {e}") from e


def _override(config: Any, overrides: Mapping[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown config override(s) {unknown}; {type(config).__name__} fields: {sorted(fields)}")
    return dataclasses.replace(config, **overrides)


def load_pretrained(path: str | os.PathLike, *, dtype: Any = jnp.float32,
                    **config_overrides: Any) -> tuple[nn.Module, Params]:
    """Builds the kipjax model of a local Hugging Face directory and converts its weights.

    `dtype` is the compute dtype; params are returned unboxed, in `config.param_dtype` (float32 unless
    overridden), ready for `model.apply({'params': params}, ...)`. Any config field can be overridden by
    keyword (e.g. `scan_layers=True`, `remat=True`, dropout rates).
    """
    directory = Path(path)
    family, config = _read_config(directory)
    with contextlib.ExitStack() as stack:
        files = _WeightFiles(directory, stack)
        available = _canonical_names(list(files.shard_of), family.head_prefixes)
        if family.fit_to_weights is not None:
            config = family.fit_to_weights(config, set(available))
        config = _override(config, {"dtype": dtype, **config_overrides})
        model = family.model_cls(config)
        scanned = getattr(config, "scan_layers", False)
        expected = traverse_util.flatten_dict(jax.eval_shape(lambda: _per_layer(nn.unbox(model.init(
            jax.random.PRNGKey(0), **family.example_inputs(config))["params"]), scanned)))

        flat: dict[ParamPath, np.ndarray] = {}
        for spec in family.weights(config):
            if spec.hf_name not in available:
                raise CheckpointError(f"{files.source}: missing weight {spec.hf_name!r}")
            name = available[spec.hf_name]
            tensor = files.read(name)
            want = jax.eval_shape(spec.to_hf, jax.ShapeDtypeStruct(expected[spec.path].shape, np.float32)).shape
            if tensor.shape != want:
                raise CheckpointError(f"{files.shard_of[name]}: weight {name!r} has shape {tuple(tensor.shape)}, "
                                      f"expected {tuple(want)} from {CONFIG_FILE}")
            flat[spec.path] = np.asarray(spec.to_kipjax(tensor), dtype=config.param_dtype)

    adapters = {p for p in expected if layers.is_lora_path(p)}
    uncovered = sorted("/".join(p) for p in set(expected) - set(flat) - adapters)
    if uncovered:
        raise RuntimeError(f"the {config.model_type} weight map leaves params unset: {uncovered}")
    if adapters:
        flat.update(_initial_adapters(model, family, config, adapters))
    params = traverse_util.unflatten_dict(flat)
    if scanned:
        params = stack_layers(params)
    return model, jax.tree_util.tree_map(jnp.asarray, params)


def _initial_adapters(model: nn.Module, family: Family, config: Any, paths: set[ParamPath]) -> Params:
    """Fresh (`model.init` with PRNGKey(0)) values of the LoRA adapter params, which checkpoints do not hold;
    compiled so that only the adapters' initializers run."""
    ordered = sorted(paths)

    def init() -> list[jax.Array]:
        params = nn.unbox(model.init(jax.random.PRNGKey(0), **family.example_inputs(config))["params"])
        flat = traverse_util.flatten_dict(_per_layer(params, getattr(config, "scan_layers", False)))
        return [flat[p] for p in ordered]

    return {p: np.asarray(v) for p, v in zip(ordered, jax.jit(init)())}


def save_pretrained(model: nn.Module, params: Params, path: str | os.PathLike) -> Path:
    """Writes `config.json` + `model.safetensors` that `transformers.AutoModel.from_pretrained` loads.

    The directory is assembled under a temporary name beside `path` and renamed into place, so `path` is
    either absent, the previous export, or complete; an existing directory at `path` is replaced.
    """
    config = model.config
    family = FAMILIES[config.model_type]
    flat = traverse_util.flatten_dict(_per_layer(nn.unbox(params), getattr(config, "scan_layers", False)))
    adapters = sorted("/".join(p) for p in flat if layers.is_lora_path(p))
    if adapters:
        raise ValueError(f"params hold LoRA adapters ({adapters[0]}, ...) that a Hugging Face checkpoint cannot "
                         f"store; fold them into the kernels first (kipjax.models.llama.merge_lora)")
    tensors = {spec.hf_name: np.ascontiguousarray(spec.to_hf(np.asarray(flat[spec.path])))
               for spec in family.weights(config)}

    target = Path(path).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (staging / CONFIG_FILE).write_text(json.dumps(config.to_hf_dict(), indent=2, sort_keys=True) + "\n")
        safetensors.numpy.save_file(tensors, staging / SAFETENSORS_FILE, metadata={"format": "pt"})
        staging.chmod(0o755)
        if target.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, previous / target.name)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(previous / target.name, target)
                raise
            finally:
                shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The directory's tokenizer via `AutoTokenizer` (which reads tokenizer.json / vocab files as present)."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
    import transformers
    return transformers.AutoTokenizer.from_pretrained(str(directory))
