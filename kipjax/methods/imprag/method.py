"""ImpRAG as a trainable method (chapter 5): fine-tunes one Llama to retrieve with implicit queries, read the
retrieved passages in its middle layers and generate, and evaluates exact match and answer recall.

Training (5.3.2): every step minimises J = J_gen + lambda * J_ret (objectives.py) on a batch mixing retrieval
tasks (each row reads its candidate passages C: the teacher's top `positives` and `hard_negatives` drawn from
its ranks `hard_ranks`, redrawn every epoch), instruction-tuning tasks and plain text (rows that read nothing
and have no J_ret). J_ret is the warmup's in-batch multi-label NCE for the first `warmup_epochs` epochs, then
self-distillation. Where the chapter is silent, kipjax chooses (each a binding):
  * C is the same set in both phases ("the same set of candidate passages", 5.3.2), and J_gen reads a row's
    own candidates (5 + 5 by default, the 10 passages inference reads); self-distillation's P_R also
    normalises over the in-batch negatives, which get no teacher mass (`distill_in_batch`);
  * the switch is per epoch, inside one run with one schedule (the chapter's 10 epochs, warmup in the first 3);
  * plain text: `plain_text_share` of the training rows are passages of the corpus as text to continue.
Evaluation (5.3.3): the corpus is encoded with L_B only (sharded over devices and hosts), each evaluation
prompt's query embedding searches it (exact or ScaNN), its top `top_k` passages are encoded for L_M and the
answer is decoded greedily with the cache; exact match and answer recall@k (`kipjax.metrics.qa`) per task and
averaged, and the same model's exact match without retrieval (L_M reads nothing), the no-retrieval baseline.
Retrieval recall is not reported for fact checking, whose answers are True / False (5.4.1).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from kipjax.data.padding import fixed_size_batches, round_up
from kipjax.methods.base import Metrics, Params
from kipjax.methods.imprag import data, kv_compression
from kipjax.methods.imprag.model import ImpragModel, LayerGroups
from kipjax.methods.imprag.objectives import generation_loss, in_batch_nce_loss, self_distillation_loss
from kipjax.methods.imprag.rag_base import LENGTH_MULTIPLE, answer_measures, CandidateRag
from kipjax.models.llama import ExtraKV, LlamaConfig
from kipjax.retrieval import corpus_encoding


KV_COMPRESSIONS = (None, "heavy_hitter", "product_quantization")


@gin.configurable
class Imprag(CandidateRag):
    """ImpRAG on a Llama (module docstring).

    Args:
      passages_file: the knowledge corpus in DPR's TSV layout (`kipjax.data.kilt.read_passages`).
      train_files / eval_files: "FORMAT:PATH" task files (`task_readers.READERS`); `examples_per_dataset` of each
        training file (the chapter: 5,000), drawn at random with `subset_seed` (None: the file's first ones).
        pseudo_labels_dir: the teacher's rankings of the training files' retrieving examples (`python -m
        kipjax.methods.imprag.pseudo_labels`).
      tokenizer_dir / pretrained / model_config: a local Hugging Face Llama directory, or a config from scratch.
      groups: the layer boundaries b and t. passage_encoding / rotated_embeddings: see `ImpragModel`.
      positives / hard_negatives / hard_ranks: the candidate set C (top 5; < 10 drawn from ranks 10-50).
      warmup_epochs: epochs of the NCE warmup before self-distillation (3 of 10; 0: distillation only; at least
        the run's epochs: warmup only). retrieval_weight: lambda. teacher_temperature / retriever_temperature:
        the temperatures of P_T and P_R. distill_in_batch: P_R normalises over the batch's other candidates
        too (`objectives.self_distillation_loss`); False: over the row's own candidates only.
      plain_text_share: plain-text rows, as a share of all training rows.
      max_prompt_tokens / max_response_tokens / passage_tokens: token budgets (l_max = passage_tokens).
      top_k: passages read at evaluation (10). search: 'exact' or 'scann'. eval_batch_size / encode_batch_size:
        prompts decoded / texts embedded together. max_new_tokens: the answer budget. eval_limit: the first N
        examples of each evaluation file. predictions_dir: if set, each evaluation file's predictions (with the
        retrieved passages) are written there as `kipjax.metrics.qa` reads them. token_cache_dir: where the
        corpus's token table is cached and memory-mapped from on later runs (`kipjax.data.token_tables`; the
        real corpus takes hours to tokenize); None tokenizes at every start.
      passage_kv_compression: how the passages' L_M states are stored at evaluation (appendix C.3): None,
        'heavy_hitter' (the `kv_keep_fraction` of each passage's tokens that received the most attention while
        it was encoded, per layer and kv head) or 'product_quantization' (OPQ + PQ per key / value head,
        `pq_subquantizers` codes of `pq_bits` bits: 8x smaller than bf16 at 32 x 8 bits for 128 dims, the
        appendix's OPQ32x128-PQ32x8), trained at each evaluation on the states of `pq_training_passages`
        corpus passages drawn at random (the appendix: 500k; every token is a training vector); the states
        the reader attends to are the decoded codes.
    """

    def __init__(
        self,
        passages_file: str = gin.REQUIRED,
        train_files: Sequence[str] = gin.REQUIRED,
        eval_files: Sequence[str] = gin.REQUIRED,
        pseudo_labels_dir: str = gin.REQUIRED,
        tokenizer_dir: str | None = None,
        pretrained: str | None = None,
        model_config: LlamaConfig | None = None,
        groups: LayerGroups = LayerGroups(),
        passage_encoding: str = "concatenated",
        rotated_embeddings: bool = False,
        examples_per_dataset: int | None = 5000,
        subset_seed: int | None = 0,
        positives: int = 5,
        hard_negatives: int = 5,
        hard_ranks: tuple[int, int] = (10, 50),
        warmup_epochs: int = 3,
        retrieval_weight: float = 1.0,
        teacher_temperature: float = 1.0,
        retriever_temperature: float = 1.0,
        distill_in_batch: bool = True,
        plain_text_share: float = 0.1,
        max_prompt_tokens: int = 256,
        max_response_tokens: int = 64,
        passage_tokens: int = 128,
        top_k: int = 10,
        search: str = "exact",
        eval_batch_size: int = 8,
        encode_batch_size: int = 64,
        max_new_tokens: int = 16,
        eval_limit: int | None = None,
        predictions_dir: str | None = None,
        seed: int = 0,
        compute_dtype: str = "float32",
        remat: bool = False,
        token_cache_dir: str | None = None,
        passage_kv_compression: str | None = None,
        kv_keep_fraction: float = 0.5,
        pq_subquantizers: int = 32,
        pq_bits: int = 8,
        pq_training_passages: int = 256,
    ):
        self._load("Imprag", passages_file=passages_file, train_files=train_files, eval_files=eval_files,
                   rankings_dir=pseudo_labels_dir, tokenizer_dir=tokenizer_dir, pretrained=pretrained,
                   model_config=model_config, examples_per_dataset=examples_per_dataset, subset_seed=subset_seed,
                   plain_text_share=plain_text_share, max_prompt_tokens=max_prompt_tokens,
                   max_response_tokens=max_response_tokens, passage_tokens=passage_tokens, eval_limit=eval_limit,
                   eval_batch_size=eval_batch_size, max_new_tokens=max_new_tokens, predictions_dir=predictions_dir,
                   seed=seed, compute_dtype=compute_dtype, remat=remat, token_cache_dir=token_cache_dir)
        self.model = ImpragModel(self.llama, groups, passage_encoding, rotated_embeddings)
        self._init_candidates(positives, hard_negatives, hard_ranks, warmup_epochs)
        self.retrieval_weight = retrieval_weight
        self.teacher_temperature, self.retriever_temperature = teacher_temperature, retriever_temperature
        self.distill_in_batch = distill_in_batch
        self.top_k, self.search, self.encode_batch_size = top_k, search, encode_batch_size
        self._jit_generate = jax.jit(self.model.generate, static_argnames=("passage_slots", "max_new_tokens",
                                                                           "eos_token"))
        if passage_kv_compression not in KV_COMPRESSIONS:
            raise ValueError(f"Imprag: passage_kv_compression must be one of {KV_COMPRESSIONS}, got "
                             f"{passage_kv_compression!r}")
        self.kv_compression, self.kv_keep_fraction = passage_kv_compression, kv_keep_fraction
        self.pq_subquantizers, self.pq_bits, self.pq_training_passages = pq_subquantizers, pq_bits, pq_training_passages
        self._jit_states = jax.jit(self._reading_states)
        self._jit_passage_states = jax.jit(self.model.passage_states)

    # ---------------------------------------------------------------------------------------------- data

    def train_examples(self) -> dict[str, np.ndarray]:
        sequences = [data.tokenize_example(self.tokenizer, e, self.max_prompt_tokens, self.max_response_tokens)
                     for e in self.training]
        width = round_up(max(len(s.ids) for s in sequences) - 1, LENGTH_MULTIPLE)
        return {**data.training_arrays(sequences, width), "example_index": np.arange(len(sequences), dtype=np.int32)}

    def batch_from_features(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The rows' sequences with their candidates' passage tokens gathered from the corpus."""
        names = ("input_ids", "attention_mask", "targets", "loss_mask", "query_index")
        return {**{n: features[n] for n in names}, **self._candidate_features(features["example_index"])}

    # --------------------------------------------------------------------------------------------- model

    def loss(self, params: Params, batch: Mapping[str, Any], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        model = self.model
        rows, count, l_max = batch["passage_ids"].shape
        rngs = {"dropout": rng}
        passage_ids = batch["passage_ids"].reshape(rows * count, l_max)
        passage_mask = batch["passage_mask"].reshape(rows * count, l_max)
        embeddings, single = model.candidate_states(params, passage_ids, passage_mask, deterministic=False,
                                                    rngs=rngs)
        embeddings = embeddings.reshape(rows, count, -1)
        if model.passage_encoding == "independent":
            reading = model.concatenate_candidates(single, rows)
        else:
            reading = model.passage_states(params, batch["passage_ids"], batch["passage_mask"], deterministic=False,
                                           rngs=rngs)
        out = model.read(params, batch["input_ids"], batch["attention_mask"], reading, count * l_max,
                         deterministic=False, rngs=rngs)
        j_gen = generation_loss(out.logits, batch["targets"], batch["loss_mask"])
        queries = model.embedding_of(out, batch["query_index"])
        valid = batch["candidate_valid"]
        warmup = in_batch_nce_loss(queries, embeddings, batch["candidate_ids"], valid, batch["positive"])

        def distillation() -> jax.Array:
            likelihoods = model.candidate_log_likelihoods(params, batch["input_ids"], batch["attention_mask"],
                                                          batch["targets"], batch["loss_mask"], single)
            return self_distillation_loss(queries, embeddings, batch["candidate_ids"], valid, likelihoods,
                                          self.teacher_temperature, self.retriever_temperature,
                                          self.distill_in_batch)

        j_ret = jax.lax.cond(batch["distill"][0] > 0, distillation, lambda: warmup)
        scores = jnp.einsum("bd,bcd->bc", queries, embeddings)
        best = jnp.argmax(jnp.where(valid, scores, -jnp.inf), axis=-1)
        top_is_positive = jnp.take_along_axis(batch["positive"], best[:, None], axis=1)[:, 0]
        retrieving = jnp.any(valid, axis=1).astype(jnp.float32)
        metrics = {"generation_loss": j_gen, "retrieval_loss": j_ret,
                   "top1_is_pseudo_positive": (top_is_positive * retrieving).sum() / jnp.maximum(retrieving.sum(), 1)}
        return j_gen + self.retrieval_weight * j_ret, metrics

    # ---------------------------------------------------------------------------------------- evaluation

    def _encode_passages(self, params: Params, ids: jax.Array, mask: jax.Array) -> jax.Array:
        return self.model.passage_embeddings(params, ids, mask)

    def _encode_queries(self, params: Params, ids: jax.Array, mask: jax.Array) -> jax.Array:
        return self.model.query_embeddings(params, ids, mask)

    def retrieve(self, params: Params, prompts: Sequence[Sequence[int]],
                 corpus: tuple[np.ndarray, corpus_encoding.CorpusLayout]) -> np.ndarray:
        """[N, top_k] passage rows for each prompt (`data.prompt_tokens`), best first."""
        return self._retrieve(self._encode_queries, params, prompts, corpus, self.top_k)

    def _reading_states(self, params: Params, ids: jax.Array, mask: jax.Array,
                        quantizers: kv_compression.Quantizers | None) -> dict[int, ExtraKV]:
        """The L_M states the reader attends to: the passages' own, or what their compression keeps."""
        if self.kv_compression == "heavy_hitter":
            return self.model.heavy_hitter_states(params, ids, mask, self.kv_keep_fraction)
        states = self.model.passage_states(params, ids, mask)
        if self.kv_compression == "product_quantization":
            return kv_compression.decode(quantizers, kv_compression.encode(quantizers, states))
        return states

    def train_quantizers(self, params: Params) -> kv_compression.Quantizers:
        """Product quantizers of L_M's keys / values, trained on `pq_training_passages` random corpus passages
        (each alone), encoded `eval_batch_size` at a time."""
        count = min(self.pq_training_passages, len(self.passage_table))
        rows = np.sort(np.random.default_rng(self.seed).choice(len(self.passage_table), count, replace=False))
        parts: list[dict[int, ExtraKV]] = []
        for (batch,) in fixed_size_batches(self.eval_batch_size, rows, desc="passage states for PQ"):
            tokens = self.passage_table[batch][:, None].astype(np.int32)
            states = self._jit_passage_states(params, jnp.asarray(tokens), jnp.asarray(self._passage_mask(tokens)))
            parts.append(jax.tree.map(np.asarray, states))
        states = {layer: tuple(np.concatenate([p[layer][i] for p in parts])[:count] for i in range(3))
                  for layer in parts[0]}
        return kv_compression.train_quantizers(states, self.pq_subquantizers, self.pq_bits, seed=self.seed)

    def answer(self, params: Params, prompts: Sequence[Sequence[int]], passages: np.ndarray | None,
               quantizers: kv_compression.Quantizers | None = None) -> list[str]:
        """Greedy answers to the prompts, reading each one's `passages` rows ([N, k]; None: no retrieval),
        their states compressed as `passage_kv_compression` says (`quantizers`: `train_quantizers`')."""
        answers: list[str] = []
        for batch in self._generation_batches(prompts, *(() if passages is None else (passages,))):
            states, slots = None, 0
            if passages is not None:
                tokens = self.passage_table[batch[2]].astype(np.int32)
                states = self._jit_states(params, jnp.asarray(tokens), jnp.asarray(self._passage_mask(tokens)),
                                          quantizers)
                slots = tokens.shape[1] * tokens.shape[2]
            out = self._jit_generate(params, jnp.asarray(batch[0]), jnp.asarray(batch[1]), states,
                                     passage_slots=slots, max_new_tokens=self.max_new_tokens,
                                     eos_token=self.tokenizer.eos_token_id)
            answers += [self._decode(row) for row in np.asarray(out)]
        return answers[:len(prompts)]

    def evaluate(self, params: Params) -> Metrics:
        """Per evaluation file and averaged: exact match and answer recall@1/@k with retrieval, and exact match
        without retrieval (the same model, L_M reading nothing)."""
        corpus = self._encode_corpus(self._encode_passages, params)
        quantizers = self.train_quantizers(params) if self.kv_compression == "product_quantization" else None
        metrics: Metrics = {}
        ks = sorted({1, self.top_k})
        for eval_set in self.eval_sets:
            top = self.retrieve(params, eval_set.prompts, corpus)
            metrics.update(self._score(eval_set, self.answer(params, eval_set.prompts, top, quantizers),
                                       self.answer(params, eval_set.prompts, None), top, ks))
        return self._with_averages(metrics, answer_measures(self.top_k))
