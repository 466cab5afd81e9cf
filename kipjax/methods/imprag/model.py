"""ImpRAG's model (chapter 5.3.1): one Llama split into layer groups that retrieve, read and generate.

Layers 0..b are the bottom group L_B, b..t the middle group L_M (it shares layer b with L_B) and t+1..N-1 the
top group L_T. Every group runs on the same Llama parameters (`Llama(..., layer_range=...)`), so a Hugging Face
checkpoint loads and exports unchanged.

- Retrieval embeddings at layer b (5.1): a query is the attention query state of its last token with the query
  heads of each grouped-query group averaged (h_k * d_h values), a passage the key state of its last token, and
  s(q, p) is their dot product. The states are taken before RoPE by default: rotated ones would make a score
  depend on where each text's last token sits (`rotated_embeddings` keeps the rotated ones, as an option).
  The query embedding needs only layers 0..b-1 and layer b's projections, so it does not depend on passages.
- Reading: the k passages of a query are encoded by layers 0..t as one (batch, k * l_max) row; in L_M the
  query's tokens attend to those keys / values besides their own causal context (`Llama(extra_kv=...)`), in
  L_T they do not. `passage_encoding` (appendix C.1, Table C.1): 'concatenated' (causal attention across the
  whole concatenation, the best of Table C.1), 'segmented' (each passage attends only to itself, positions
  continuing across passages) or 'independent' (each passage alone, positions from 0). The chapter's "full
  attention" is read as the decoder's own causal attention over the concatenation: a passage reads the ones
  before it, never the ones after (a decoder has no bidirectional mode, and 5.3.1 keeps attention causal).
- Position ids: the query's start at k * l_max (5.3.1), past every passage position in all three encodings.
  Passage position ids count only their tokens (pads take none), as if their texts were concatenated.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import gin
import jax
import jax.numpy as jnp

from kipjax import decoding
from kipjax.methods.imprag import kv_compression
from kipjax.methods.imprag.objectives import response_log_likelihood
from kipjax.models import layers
from kipjax.models.llama import CausalLMOutput, ExtraKV, Llama, default_positions

Array = jax.Array
Params = Any
PASSAGE_ENCODINGS = ("concatenated", "segmented", "independent")


def last_token_index(mask: Array) -> Array:
    """(batch,) index of each row's last attended token, for left or right padding."""
    length = mask.shape[1]
    return (length - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=1)).astype(jnp.int32)


def _at_index(states: Array, index: Array) -> Array:
    """states (batch, length, heads, head_dim) at each row's `index` -> (batch, heads, head_dim)."""
    return jnp.take_along_axis(states, index[:, None, None, None], axis=1)[:, 0]


def query_embedding(query_states: Array, index: Array, kv_heads: int) -> Array:
    """(batch, kv_heads * head_dim): the query states at `index`, each grouped-query group's heads averaged.
    Query head h reads kv head h // group (Hugging Face's `repeat_kv`), so a group is a run of adjacent heads."""
    q = _at_index(query_states, index).astype(jnp.float32)
    batch, heads, head_dim = q.shape
    return q.reshape(batch, kv_heads, heads // kv_heads, head_dim).mean(axis=2).reshape(batch, -1)


def passage_embedding(key_states: Array, index: Array) -> Array:
    """(batch, kv_heads * head_dim): the key states at `index`."""
    k = _at_index(key_states, index).astype(jnp.float32)
    return k.reshape(k.shape[0], -1)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LayerGroups:
    """Boundaries b (last bottom layer, also the first middle one) and t (last middle layer); 0 <= b <= t < N-1
    is not required at the top: t = N-1 leaves L_T empty. The chapter: b = 7, t = 19 (Llama-3.2-3B) or 23
    (Llama-3.1-8B)."""

    bottom_end: int = 7
    middle_end: int = 19

    def check(self, num_layers: int) -> None:
        if not 0 <= self.bottom_end <= self.middle_end < num_layers:
            raise ValueError(f"layer groups need 0 <= b <= t < {num_layers} (the model's layers), got "
                             f"b = {self.bottom_end}, t = {self.middle_end}")

    @property
    def middle(self) -> tuple[int, ...]:
        return tuple(range(self.bottom_end, self.middle_end + 1))


@dataclasses.dataclass(frozen=True)
class ImpragModel:
    """The functions ImpRAG computes with one Llama's params (see the module docstring). All are traceable."""

    llama: Llama
    groups: LayerGroups
    passage_encoding: str = "concatenated"
    rotated_embeddings: bool = False

    def __post_init__(self) -> None:
        cfg = self.llama.config
        if cfg.scan_layers:
            raise ValueError("ImpRAG runs its layer groups separately: build the Llama with scan_layers=False")
        self.groups.check(cfg.num_hidden_layers)
        if self.passage_encoding not in PASSAGE_ENCODINGS:
            raise ValueError(f"passage_encoding must be one of {PASSAGE_ENCODINGS}, got {self.passage_encoding!r}")

    @property
    def embedding_size(self) -> int:
        cfg = self.llama.config
        return cfg.num_key_value_heads * cfg.head_dim

    def _bottom(self, params: Params, ids: Array, mask: Array, **kwargs: Any) -> CausalLMOutput:
        b = self.groups.bottom_end
        return self.llama.apply({"params": params}, ids, mask, layer_range=(0, b), return_qk_layers=(b,),
                                rotated_states=self.rotated_embeddings, **kwargs)

    def query_embeddings(self, params: Params, ids: Array, mask: Array, index: Array | None = None) -> Array:
        """(batch, h_k * d_h) embeddings of (batch, length) queries, at `index` (default: the last token)."""
        out = self._bottom(params, ids, mask)
        index = last_token_index(mask) if index is None else index
        return query_embedding(out.query_states[self.groups.bottom_end], index, self.llama.config.num_key_value_heads)

    def passage_embeddings(self, params: Params, ids: Array, mask: Array) -> Array:
        """(batch, h_k * d_h) embeddings of (batch, length) passages (L_B only: how the corpus is indexed)."""
        out = self._bottom(params, ids, mask)
        return passage_embedding(out.key_states[self.groups.bottom_end], last_token_index(mask))

    def _encode_passages(self, params: Params, ids: Array, mask: Array, deterministic: bool,
                         rngs: Mapping[str, Array] | None) -> tuple[CausalLMOutput, Array, Array | None]:
        """Layers 0..t over each row's (batch, k, l_max) passages as `passage_encoding` says: the output (with
        L_M's post-RoPE query / key / value states), the (batch, k * l_max) mask and the segment ids (None when
        the passages attend across each other)."""
        batch, k, l_max = ids.shape
        flat_ids, flat_mask = ids.reshape(batch, k * l_max), mask.reshape(batch, k * l_max)
        segments = None
        if self.passage_encoding == "concatenated":
            positions = default_positions(flat_mask)
        else:
            segments = jnp.broadcast_to(jnp.repeat(jnp.arange(k), l_max)[None], (batch, k * l_max))
            if self.passage_encoding == "segmented":
                positions = default_positions(flat_mask)
            else:
                positions = default_positions(mask.reshape(batch * k, l_max)).reshape(batch, k * l_max)
        out = self.llama.apply({"params": params}, flat_ids, flat_mask, positions, deterministic=deterministic,
                               layer_range=(0, self.groups.middle_end), return_qk_layers=self.groups.middle,
                               segment_ids=segments, rngs=rngs)
        return out, flat_mask, segments

    def passage_states(self, params: Params, ids: Array, mask: Array, deterministic: bool = True,
                       rngs: Mapping[str, Array] | None = None) -> dict[int, ExtraKV]:
        """L_M's keys / values of each row's (batch, k, l_max) passages, encoded by layers 0..t as
        `passage_encoding` says: {layer: (keys, values, mask)} over (batch, k * l_max) slots."""
        out, flat_mask, _ = self._encode_passages(params, ids, mask, deterministic, rngs)
        return {i: (out.key_states[i], out.value_states[i], flat_mask) for i in self.groups.middle}

    def heavy_hitter_states(self, params: Params, ids: Array, mask: Array, keep_fraction: float
                            ) -> dict[int, ExtraKV]:
        """`passage_states` keeping, per passage, layer and kv head, the `keep_fraction` of its tokens that
        received the most attention while the passages were encoded (appendix C.3's heavy hitters;
        `kv_compression.keep_heavy_hitters`): (batch, k * ceil(keep_fraction * l_max)) slots."""
        out, flat_mask, segments = self._encode_passages(params, ids, mask, True, None)
        states = {i: (out.key_states[i], out.value_states[i], flat_mask) for i in self.groups.middle}
        scores = {i: kv_compression.accumulated_attention(out.query_states[i], out.key_states[i], flat_mask, segments)
                  for i in self.groups.middle}
        return kv_compression.keep_heavy_hitters(states, scores, keep_fraction, passages=ids.shape[1])

    def candidate_states(self, params: Params, ids: Array, mask: Array, deterministic: bool = True,
                         rngs: Mapping[str, Array] | None = None) -> tuple[Array, dict[int, ExtraKV]]:
        """Each of (rows, l_max) passages alone: its embedding (rows, h_k * d_h) and its L_M keys / values
        {layer: (keys, values, mask)} over (rows, l_max), positions from 0 (the 'independent' encoding). One
        pass serves both: layers 0..b with the embedding's (unrotated) states, layers b+1..t from there, and
        layer b's keys rotated here exactly as its attention rotates them."""
        b, t = self.groups.bottom_end, self.groups.middle_end
        cfg = self.llama.config
        positions = default_positions(mask)
        bottom = self.llama.apply({"params": params}, ids, mask, positions, deterministic=deterministic,
                                  layer_range=(0, b), return_qk_layers=(b,), rotated_states=self.rotated_embeddings,
                                  rngs=rngs)
        embeddings = passage_embedding(bottom.key_states[b], last_token_index(mask))
        keys = bottom.key_states[b]
        if not self.rotated_embeddings:
            inv_freq = layers.rope_inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
            keys = layers.apply_rope(keys, positions, inv_freq)
        states = {b: (keys, bottom.value_states[b], mask)}
        if t > b:
            upper = self.llama.apply({"params": params}, None, mask, positions, deterministic=deterministic,
                                     layer_range=(b + 1, t), hidden_states=bottom.last_hidden_state,
                                     return_qk_layers=tuple(range(b + 1, t + 1)), rngs=rngs)
            states.update({i: (upper.key_states[i], upper.value_states[i], mask) for i in range(b + 1, t + 1)})
        return embeddings, states

    @staticmethod
    def concatenate_candidates(states: Mapping[int, ExtraKV], batch: int) -> dict[int, ExtraKV]:
        """`candidate_states` of (batch * k) passages as each row's k passages read together: the
        'independent' encoding's `passage_states`."""
        def join(x: Array) -> Array:
            return x.reshape(batch, -1, *x.shape[2:])
        return {i: tuple(join(x) for x in kv) for i, kv in states.items()}

    def candidate_log_likelihoods(self, params: Params, ids: Array, mask: Array, targets: Array, loss_mask: Array,
                                  states: Mapping[int, ExtraKV]) -> Array:
        """(batch, k): log P_LM(r | p, q) for each of a row's k candidates p read alone (`candidate_states`
        over batch * k passages), the mean log-probability of the response tokens (5.4). The query's layers
        below b do not read passages, so they run once per row; layers b..N-1 run once per candidate, one
        candidate of every row at a time (memory of one batch's logits). No gradient reaches `params`."""
        params = jax.lax.stop_gradient(params)
        states = jax.lax.stop_gradient(dict(states))
        b = self.groups.bottom_end
        batch = ids.shape[0]
        l_max = next(iter(states.values()))[0].shape[1]
        positions = self.query_positions(mask, l_max)
        hidden = None
        if b > 0:
            hidden = self.llama.apply({"params": params}, ids, mask, positions, layer_range=(0, b - 1)
                                      ).last_hidden_state
        per_candidate = {i: tuple(x.reshape(batch, -1, *x.shape[1:]).swapaxes(0, 1) for x in kv)
                         for i, kv in states.items()}  # (k, batch, l_max, ...)

        def one_candidate(kv: Mapping[int, ExtraKV]) -> Array:
            top = self.llama.apply({"params": params}, ids if hidden is None else None, mask, positions,
                                   extra_kv=kv, layer_range=(b, self.llama.config.num_hidden_layers - 1),
                                   hidden_states=hidden)
            return response_log_likelihood(top.logits, targets, loss_mask)

        return jax.lax.map(one_candidate, per_candidate).T

    def query_positions(self, mask: Array, passage_slots: int) -> Array:
        """The query's position ids: its own, shifted right past the k * l_max passage slots."""
        return default_positions(mask) + passage_slots

    def read(self, params: Params, ids: Array, mask: Array, passages: Mapping[int, ExtraKV] | None,
             passage_slots: int, deterministic: bool = True, rngs: Mapping[str, Array] | None = None
             ) -> CausalLMOutput:
        """The full model over (batch, length) query tokens whose L_M reads `passages` (`passage_states`; None:
        no retrieval, positions unshifted). The output carries layer b's query states for the query embedding."""
        b = self.groups.bottom_end
        slots = passage_slots if passages is not None else 0
        return self.llama.apply({"params": params}, ids, mask, self.query_positions(mask, slots),
                                deterministic=deterministic, extra_kv=passages, return_qk_layers=(b,),
                                rotated_states=self.rotated_embeddings, rngs=rngs)

    def embedding_of(self, out: CausalLMOutput, index: Array) -> Array:
        """The query embedding at `index` from a `read` output (layer b's queries do not depend on passages)."""
        return query_embedding(out.query_states[self.groups.bottom_end], index, self.llama.config.num_key_value_heads)

    def generate(self, params: Params, prompt_ids: Array, prompt_mask: Array,
                 passages: Mapping[int, ExtraKV] | None, passage_slots: int, max_new_tokens: int, eos_token: int,
                 pad_token: int = 0, beam_size: int = 1, length_penalty: float = 0.0) -> Array:
        """(batch, max_new_tokens) best responses to left-padded prompts whose L_M reads `passages` at every
        step (5.3.3; None: no retrieval, positions unshifted); see `generate`."""
        slots = passage_slots if passages is not None else 0
        return generate(self.llama, params, prompt_ids, prompt_mask, self.query_positions(prompt_mask, slots),
                        passages, max_new_tokens, eos_token, pad_token, beam_size, length_penalty)


def generate(llama: Llama, params: Params, prompt_ids: Array, prompt_mask: Array, positions: Array,
             extra_kv: Mapping[int, ExtraKV] | None, max_new_tokens: int, eos_token: int, pad_token: int = 0,
             beam_size: int = 1, length_penalty: float = 0.0) -> Array:
    """(batch, max_new_tokens) best responses of `llama` to left-padded prompts at `positions` (EOS, then
    `pad_token`), decoded with the key/value cache: the prompt fills it in one step, then one token per step,
    the layers of `extra_kv` reading the same external keys / values at every step. Greedy with one beam and
    length_penalty 0."""
    batch, prompt_length = prompt_ids.shape
    last_tokens = prompt_ids[:, -1]
    prompt_ids, prompt_mask, positions = decoding.repeat_for_beams((prompt_ids, prompt_mask, positions), beam_size)
    extra_kv = decoding.repeat_for_beams(dict(extra_kv), beam_size) if extra_kv is not None else None
    _, state = llama.apply({"params": params}, batch * beam_size, prompt_length + max_new_tokens,
                           method=Llama.prepare_cache, mutable=["cache"])
    _, state = llama.apply({"params": params, "cache": state["cache"]}, prompt_ids[:, :-1], prompt_mask[:, :-1],
                           positions[:, :-1], extra_kv=extra_kv, method=Llama.decode_step, mutable=["cache"])

    def step(cache: Any, tokens: Array) -> tuple[Array, Any]:
        out, new = llama.apply({"params": params, "cache": cache}, tokens[:, None], extra_kv=extra_kv,
                               method=Llama.decode_step, mutable=["cache"])
        return out.logits[:, 0], new["cache"]

    # The prompt's last token is fed as the search's start token, so its step yields the first response token.
    result = decoding.beam_search(step, state["cache"], batch_size=batch, beam_size=beam_size,
                                  max_length=max_new_tokens, start_token=last_tokens, eos_token=eos_token,
                                  pad_token=pad_token, length_penalty=length_penalty)
    return result.sequences[:, 0]
