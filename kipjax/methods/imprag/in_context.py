"""The retrieve-then-generate baselines of chapter 5 (5.4.1, C.5): a separate retriever's top passages are put
into the prompt, before the task's prompt, so that every layer attends to them, and the Llama is fine-tuned
on the training data with the causal LM loss of the response alone.

  RA-IT         the passages of Contriever-MSMARCO: `rankings_dir` holds its rankings of the training and the
                evaluation files, as `python -m kipjax.methods.imprag.pseudo_labels --teacher dense` writes them
                (the same files are ImpRAG's pseudo-labels).
  RA-DIT(-Llama) the same, with the rankings of a retriever fine-tuned first (Contriever, or Llama's first b + 1
                layers warmed up on Contriever's pseudo-labels with eq. 5.3) in `rankings_dir`.
No retrieval is the same model answering the prompt alone.

Where the chapter is silent, kipjax chooses (each a binding): the passages are the corpus's token table rows
(the same `passage_tokens` tokens ImpRAG reads), best first, each followed by `passage_separator`, with the
whole prompt after them; the `top_k` passages are read in training and at evaluation (10).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from kipjax.data.padding import round_up
from kipjax.methods.base import Metrics, Params
from kipjax.methods.imprag import data
from kipjax.methods.imprag.model import generate
from kipjax.methods.imprag.objectives import generation_loss
from kipjax.methods.imprag.rag_base import LENGTH_MULTIPLE, answer_measures, LlamaRag, Ranking
from kipjax.models.llama import LlamaConfig, default_positions


@gin.configurable
class InContextRag(LlamaRag):
    """RA-IT and RA-DIT on a Llama (module docstring).

    Args:
      passages_file / train_files / eval_files / tokenizer_dir / pretrained / model_config / examples_per_dataset
        / subset_seed / plain_text_share / max_prompt_tokens / max_response_tokens / passage_tokens / eval_limit /
        eval_batch_size / max_new_tokens / predictions_dir / seed / compute_dtype / remat / token_cache_dir: as
        `Imprag`'s.
      rankings_dir: the retriever's rankings of every training and evaluation file that retrieves
        (`pseudo_labels.pseudo_label_path` names them).
      top_k: passages in the context (10). passage_separator: text put after each passage.
    """

    def __init__(
        self,
        passages_file: str = gin.REQUIRED,
        train_files: Sequence[str] = gin.REQUIRED,
        eval_files: Sequence[str] = gin.REQUIRED,
        rankings_dir: str = gin.REQUIRED,
        tokenizer_dir: str | None = None,
        pretrained: str | None = None,
        model_config: LlamaConfig | None = None,
        examples_per_dataset: int | None = 5000,
        subset_seed: int | None = 0,
        plain_text_share: float = 0.1,
        max_prompt_tokens: int = 256,
        max_response_tokens: int = 64,
        passage_tokens: int = 128,
        top_k: int = 10,
        passage_separator: str = "\n\n",
        eval_batch_size: int = 8,
        max_new_tokens: int = 16,
        eval_limit: int | None = None,
        predictions_dir: str | None = None,
        seed: int = 0,
        compute_dtype: str = "float32",
        remat: bool = False,
        token_cache_dir: str | None = None,
    ):
        self._load("InContextRag", passages_file=passages_file, train_files=train_files, eval_files=eval_files,
                   rankings_dir=rankings_dir, tokenizer_dir=tokenizer_dir, pretrained=pretrained,
                   model_config=model_config, examples_per_dataset=examples_per_dataset, subset_seed=subset_seed,
                   plain_text_share=plain_text_share, max_prompt_tokens=max_prompt_tokens,
                   max_response_tokens=max_response_tokens, passage_tokens=passage_tokens, eval_limit=eval_limit,
                   eval_batch_size=eval_batch_size, max_new_tokens=max_new_tokens, predictions_dir=predictions_dir,
                   seed=seed, compute_dtype=compute_dtype, remat=remat, token_cache_dir=token_cache_dir)
        if top_k < 1:
            raise ValueError(f"InContextRag: top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.separator = self.tokenizer(passage_separator, add_special_tokens=False)["input_ids"]
        self.eval_rankings = [self._rankings(s.source, s.examples) for s in self.eval_sets]
        self._jit_generate = jax.jit(self._generate, static_argnames=("max_new_tokens", "eos_token"))

    def _context(self, ranking: Ranking | None) -> list[int]:
        """The in-context tokens of a ranking's top `top_k` passages (none for an example that does not
        retrieve)."""
        if ranking is None:
            return []
        return data.context_tokens(self.passage_table[np.asarray(ranking[:self.top_k], np.int64)],
                                   self.tokenizer.eos_token_id, self.separator)

    def _sequence(self, example: Any, ranking: Ranking | None) -> data.TokenSequence:
        sequence = data.tokenize_example(self.tokenizer, example, self.max_prompt_tokens, self.max_response_tokens)
        return data.insert_context(sequence, self._context(ranking), self.tokenizer.bos_token_id is not None)

    def train_examples(self) -> dict[str, np.ndarray]:
        sequences = [self._sequence(e, r) for e, r in zip(self.training, self.rankings)]
        width = round_up(max(len(s.ids) for s in sequences) - 1, LENGTH_MULTIPLE)
        arrays = data.training_arrays(sequences, width)
        return {n: arrays[n] for n in ("input_ids", "attention_mask", "targets", "loss_mask")}

    def loss(self, params: Params, batch: Mapping[str, Any], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        out = self.llama.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                               deterministic=False, rngs={"dropout": rng})
        j_gen = generation_loss(out.logits, batch["targets"], batch["loss_mask"])
        return j_gen, {"generation_loss": j_gen}

    # ---------------------------------------------------------------------------------------- evaluation

    def _generate(self, params: Params, ids: jax.Array, mask: jax.Array, max_new_tokens: int, eos_token: int
                  ) -> jax.Array:
        return generate(self.llama, params, ids, mask, default_positions(mask), None, max_new_tokens, eos_token)

    def answer(self, params: Params, prompts: Sequence[Sequence[int]]) -> list[str]:
        """Greedy answers to the prompts (passages, if any, already in them)."""
        answers: list[str] = []
        for ids, mask in self._generation_batches(prompts):
            out = self._jit_generate(params, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=self.max_new_tokens,
                                     eos_token=self.tokenizer.eos_token_id)
            answers += [self._decode(row) for row in np.asarray(out)]
        return answers[:len(prompts)]

    def evaluate(self, params: Params) -> Metrics:
        """Per evaluation file and averaged: exact match and answer recall@1/@k reading the retriever's top
        `top_k` in the context, and exact match of the prompt alone."""
        metrics: Metrics = {}
        bos = self.tokenizer.bos_token_id is not None
        for eval_set, rankings in zip(self.eval_sets, self.eval_rankings):
            top = [list(r[:self.top_k]) if r is not None else [] for r in rankings]
            reading = [data.insert_context(data.TokenSequence(p, len(p)), self._context(r), bos).ids
                       for p, r in zip(eval_set.prompts, rankings)]
            metrics.update(self._score(eval_set, self.answer(params, reading), self.answer(params, eval_set.prompts),
                                       top, sorted({1, self.top_k})))
        return self._with_averages(metrics, answer_measures(self.top_k))
