"""What ImpRAG and its retrieve-then-generate baselines (RA-IT, RA-DIT-Llama; 5.4.1) share, so that they differ
only in how passages reach the model: a Llama from a local Hugging Face directory or a config, the passage
corpus and its token table, the task files with a retriever's rankings of their examples, plain-text rows,
evaluation prompts, batched greedy answers and the scoring of an evaluation file (exact match, answer recall,
exact match without retrieval), with the predictions written as `kipjax.metrics.qa` reads them.

Rankings files are the pseudo-label files (`data.read_pseudo_labels`): for ImpRAG the teacher's rankings of the
training files, for a baseline also its retriever's rankings of the evaluation files, in the same layout
(`python -m kipjax.methods.imprag.pseudo_labels --task ...` writes both).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from kipjax.data.kilt import read_passages
from kipjax.data.padding import fixed_size_batches, pad_rows, round_up
from kipjax.data.token_tables import cached_token_table, row_mask
from kipjax import partitioning
from kipjax.methods.base import Method, Metrics, Params
from kipjax.methods.encoder_setup import COMPUTE_DTYPES
from kipjax.methods.imprag import data
from kipjax.methods.imprag.pseudo_labels import pseudo_label_path
from kipjax.methods.imprag.templates import FEVER_ANSWERS, PromptExample
from kipjax.methods.model_source import check_model_source
from kipjax.methods.taco.inputs import passage_text
from kipjax.metrics import qa as qa_metrics
from kipjax.models import hf
from kipjax.models.llama import Llama, LlamaConfig
from kipjax.partitioning import fill_boxed
from kipjax.retrieval import corpus_encoding
from kipjax.retrieval.corpus_encoding import EncodeFn
from kipjax.run_log import atomic_write_text

LENGTH_MULTIPLE = 16  # evaluation prompts are padded to a multiple of this, so batches share compilations
Ranking = list[int]  # passage rows, best first


def answer_measures(top_k: int) -> tuple[str, ...]:
    """What a reading method averages over its evaluation files."""
    return ("exact_match", f"answer_recall@{top_k}", "no_retrieval_exact_match")


class EvalSet(NamedTuple):
    """An evaluation file's examples and their prompt tokens (tokenized once, used at every evaluation)."""

    source: str
    examples: list[PromptExample]
    prompts: list[list[int]]


class LlamaRag(Method):
    """The shared state and helpers (module docstring); subclasses call `_load` from their `__init__`."""

    def _load(self, owner: str, *, passages_file: str, train_files: Sequence[str], eval_files: Sequence[str],
              rankings_dir: str, tokenizer_dir: str | None, pretrained: str | None,
              model_config: LlamaConfig | None, examples_per_dataset: int | None, subset_seed: int | None,
              plain_text_share: float,
              max_prompt_tokens: int, max_response_tokens: int, passage_tokens: int, eval_limit: int | None,
              eval_batch_size: int, max_new_tokens: int, predictions_dir: str | None, seed: int,
              compute_dtype: str, remat: bool, token_cache_dir: str | None) -> None:
        """Reads the tokenizer, corpus and task files and builds `llama` (pretrained params, if any, in
        `pretrained_params`). Each training file gives `examples_per_dataset` examples drawn at random
        (`subset_seed`; None: its first ones)."""
        check_model_source(owner, "Llama", pretrained, model_config, tokenizer_dir)
        self.owner = owner
        self.tokenizer = hf.load_tokenizer(tokenizer_dir or pretrained)
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"{owner}: the tokenizer has no eos token")
        overrides: dict[str, Any] = {"dtype": COMPUTE_DTYPES[compute_dtype], "remat": remat, "scan_layers": False}
        self.pretrained_params = None
        if pretrained is not None:
            llama, self.pretrained_params = hf.load_pretrained(pretrained, **overrides)
        else:
            llama = Llama(dataclasses.replace(model_config, **overrides))
        if llama.config.vocab_size < len(self.tokenizer):
            raise ValueError(f"{owner}: the model's vocab_size {llama.config.vocab_size} is smaller than the "
                             f"tokenizer's {len(self.tokenizer)} tokens")
        self.max_prompt_tokens, self.max_response_tokens = max_prompt_tokens, max_response_tokens
        self.eval_batch_size, self.max_new_tokens = eval_batch_size, max_new_tokens
        self.predictions_dir, self.seed, self.rankings_dir = predictions_dir, seed, rankings_dir

        corpus = read_passages(passages_file)
        self.passage_ids = [str(i) for i in corpus.ids]
        self.passage_texts = [passage_text(t, x) for t, x in zip(corpus.titles, corpus.texts)]
        self.passage_table = cached_token_table(
            self.tokenizer, self.passage_texts, passage_tokens, source_file=passages_file,
            tokenizer_dir=tokenizer_dir or pretrained, cache_dir=token_cache_dir, desc="tokenize passages")
        self.training, self.rankings, self.train_sources = [], [], []
        for index, source in enumerate(train_files):
            if subset_seed is None:
                examples = data.read_sources([source], examples_per_dataset)
            else:
                examples = data.sample_examples(data.read_sources([source], None), examples_per_dataset,
                                                np.random.default_rng([subset_seed, index]))
            self.training += examples
            self.rankings += self._rankings(source, examples)
            self.train_sources.append((source, len(examples)))
        self.training += self._plain_text(len(self.training), plain_text_share)
        self.rankings += [None] * (len(self.training) - len(self.rankings))
        self.eval_sets = [self._eval_set(source, eval_limit) for source in eval_files]
        self.llama = llama

    def init(self, rng: jax.Array, batch: Mapping[str, Any]) -> Params:
        params = self.llama.init(rng, batch["input_ids"][:1], batch["attention_mask"][:1])["params"]
        if self.pretrained_params is not None:
            params = fill_boxed(params, self.pretrained_params)
        return params

    # ---------------------------------------------------------------------------------------------- data

    def _rankings(self, source: str, examples: Sequence[PromptExample]) -> list[Ranking | None]:
        """Per example of `source`, the retriever's ranking from `rankings_dir` (None for an example that does
        not retrieve). Rankings are matched within their own file (ids repeat across datasets)."""
        if not any(e.retrieve for e in examples):
            return [None] * len(examples)
        path = pseudo_label_path(self.rankings_dir, source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{self.owner}: no rankings {path} for {source}; write them with "
                                    "python -m kipjax.methods.imprag.pseudo_labels")
        rows = {pid: i for i, pid in enumerate(self.passage_ids)}
        found = data.read_pseudo_labels(path, rows)
        rankings: list[Ranking | None] = []
        for example in examples:
            if example.retrieve and example.id not in found:
                raise ValueError(f"{self.owner}: example {example.id!r} of {source} has no ranking in {path}")
            rankings.append(found[example.id] if example.retrieve else None)
        return rankings

    def _passage_mask(self, rows: np.ndarray) -> np.ndarray:
        """The attention mask of passage table rows (`row_mask`: id 0 can be a real token)."""
        return row_mask(rows, self.tokenizer.eos_token_id)

    def _plain_text(self, task_rows: int, share: float) -> list[PromptExample]:
        """Corpus passages as text to continue, `share` of all training rows (drawn without replacement)."""
        if not 0 <= share < 1:
            raise ValueError(f"{self.owner}: plain_text_share must be in [0, 1), got {share}")
        count = min(round(task_rows * share / (1 - share)), len(self.passage_texts))
        picked = np.random.default_rng(self.seed).choice(len(self.passage_texts), size=count, replace=False)
        return [PromptExample(f"plain-{r}", "plain_text", "", self.passage_texts[r], (), False) for r in picked]

    def _eval_set(self, source: str, limit: int | None) -> EvalSet:
        examples = data.read_sources([source], limit)
        return EvalSet(source, examples, [data.prompt_tokens(self.tokenizer, e, self.max_prompt_tokens)
                                          for e in examples])

    # ---------------------------------------------------------------------------------------- evaluation

    @staticmethod
    def _prompt_arrays(prompts: Sequence[Sequence[int]], left: bool) -> tuple[np.ndarray, np.ndarray]:
        """[N, width] prompt tokens, left-padded (generation) or right-padded (embedding), and their mask (the
        pad id may be a real token)."""
        width = round_up(max(len(p) for p in prompts), LENGTH_MULTIPLE)
        return pad_rows(prompts, width, left=left), pad_rows([[1] * len(p) for p in prompts], width, left=left)

    def _generation_batches(self, prompts: Sequence[Sequence[int]], *extra: np.ndarray
                            ) -> Iterable[tuple[np.ndarray, ...]]:
        """Left-padded (ids, mask, *extra) batches of `eval_batch_size` rows: one compiled shape."""
        ids, mask = self._prompt_arrays(prompts, left=True)
        return fixed_size_batches(self.eval_batch_size, ids, mask, *extra, desc="generate")

    def _decode(self, tokens: np.ndarray) -> str:
        eos = np.flatnonzero(tokens == self.tokenizer.eos_token_id)
        kept = tokens[:eos[0]] if len(eos) else tokens
        return self.tokenizer.decode(kept.tolist(), skip_special_tokens=True).strip()

    @staticmethod
    def _recall_applies(examples: Sequence[PromptExample]) -> bool:
        """Whether answer recall means anything: not for fact checking, whose answers are True / False (5.4.1)."""
        return not all(set(e.answers) <= set(FEVER_ANSWERS.values()) for e in examples)

    def _score(self, eval_set: EvalSet, predictions: Sequence[str], blind: Sequence[str],
               top: Sequence[Sequence[int]], ks: Sequence[int]) -> Metrics:
        """One file's exact match with retrieval (reading `top`, passage rows best first), answer recall@k
        (not for fact checking, whose answers are True / False: 5.4.1) and exact match without retrieval;
        the predictions, with their passages, go to `predictions_dir`."""
        examples = eval_set.examples
        name = examples[0].task if examples else eval_set.source
        gold = [{"id": e.id, "answers": list(e.answers)} for e in examples]
        ranked = [[self.passage_texts[r] for r in row] for row in top]
        rows = [{"id": e.id, "prediction": p, "passages": r} for e, p, r in zip(examples, predictions, ranked)]
        scored = qa_metrics.evaluate(gold, rows, ks=ks)
        metrics: Metrics = {f"{name}/exact_match": scored["exact_match"]}
        if self._recall_applies(examples):
            metrics.update({f"{name}/answer_recall@{k}": scored[f"answer_recall@{k}"] for k in ks})
        metrics[f"{name}/no_retrieval_exact_match"] = qa_metrics.evaluate(
            gold, [{"id": e.id, "prediction": p} for e, p in zip(examples, blind)], ks=[1])["exact_match"]
        if self.predictions_dir and jax.process_index() == 0:
            os.makedirs(self.predictions_dir, exist_ok=True)
            atomic_write_text(os.path.join(self.predictions_dir,
                                           f"{os.path.basename(eval_set.source)}.predictions.jsonl"),
                              "".join(json.dumps(r) + "\n" for r in rows))
        return metrics

    def _encode_corpus(self, encode: EncodeFn, params: Params) -> tuple[np.ndarray, corpus_encoding.CorpusLayout]:
        """This host's rows of the corpus embedded by `encode` (sharded over devices and hosts)."""
        return corpus_encoding.encode_corpus(encode, params, self.passage_table,
                                             self._passage_mask,
                                             mesh=partitioning.current_mesh(), batch_size=self.encode_batch_size,
                                             desc="encode corpus")

    def _retrieve(self, encode: EncodeFn, params: Params, prompts: Sequence[Sequence[int]],
                  corpus: tuple[np.ndarray, corpus_encoding.CorpusLayout], k: int) -> np.ndarray:
        """[N, k] passage rows for each prompt (`data.prompt_tokens`) embedded by `encode`, best first, by the
        `search` binding's kind."""
        mesh = partitioning.current_mesh()
        ids, mask = self._prompt_arrays(prompts, left=False)
        queries = corpus_encoding.encode_everywhere(encode, params, ids, mask, mesh=mesh,
                                                    batch_size=self.encode_batch_size, desc="encode queries")
        local, layout = corpus
        _, top = corpus_encoding.search_corpus(self.search, queries, local, layout, mesh, k,
                                               query_batch=self.encode_batch_size)
        return top

    @staticmethod
    def _with_averages(metrics: Metrics, measures: Sequence[str]) -> Metrics:
        """`metrics` ("file/measure") plus, for each of `measures`, its average over the files that report it."""
        averaged = dict(metrics)
        for measure in measures:
            values = [v for k, v in metrics.items() if k.endswith("/" + measure)]
            if values:
                averaged[f"average/{measure}"] = float(np.mean(values))
        return averaged


class CandidateRag(LlamaRag):
    """A LlamaRag that trains a retriever on candidate sets C drawn from the teacher's rankings (5.3.2.1): the
    top `positives` as pseudo-positives and `hard_negatives` from ranks `hard_ranks`, redrawn every epoch, with
    the retrieval objective switching from the warmup to distillation after `warmup_epochs`."""

    def _init_candidates(self, positives: int, hard_negatives: int, hard_ranks: tuple[int, int],
                         warmup_epochs: int) -> None:
        if positives < 1 or hard_negatives < 0 or not 1 <= hard_ranks[0] <= hard_ranks[1]:
            raise ValueError(f"{self.owner}: need positives >= 1, hard_negatives >= 0 and 1 <= hard_ranks[0] <= "
                             f"hard_ranks[1], got {positives}, {hard_negatives}, {hard_ranks}")
        self.positives, self.hard_negatives, self.hard_ranks = positives, hard_negatives, tuple(hard_ranks)
        self.warmup_epochs = warmup_epochs
        self.candidates = np.full((len(self.training), positives + hard_negatives), data.CANDIDATE_PAD)
        self.positive = np.zeros(self.candidates.shape, bool)
        self.distill = False

    def on_epoch_start(self, params: Params, epoch: int, rng: jax.Array) -> None:
        """This epoch's candidate sets (fresh hard negatives) and retrieval objective."""
        generator = np.random.default_rng([self.seed, epoch])
        for row, ranking in enumerate(self.rankings):
            if ranking is not None:
                self.candidates[row], self.positive[row] = data.draw_candidates(
                    ranking, self.positives, self.hard_negatives, self.hard_ranks, generator)
        self.distill = epoch >= self.warmup_epochs

    def state_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "positive": self.positive, "distill": np.asarray(self.distill)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copies of the checkpoint's arrays (restored as jax arrays, whose numpy views are read-only) in the
        dtypes `_init_candidates` made: the next `on_epoch_start` redraws them in place."""
        self.candidates = np.array(state["candidates"], self.candidates.dtype)
        self.positive = np.array(state["positive"], bool)
        self.distill = bool(state["distill"])

    def _candidate_features(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The rows' candidates ([rows, |C|] passage rows, valid, pseudo-positive), their passage tokens
        gathered from the corpus ([rows, |C|, l_max] and mask) and the objective's switch."""
        candidates = self.candidates[rows]
        valid = candidates != data.CANDIDATE_PAD
        passages = np.where(valid[..., None], self.passage_table[np.maximum(candidates, 0)], 0).astype(np.int32)
        return {"candidate_ids": candidates.astype(np.int32), "candidate_valid": valid,
                "positive": self.positive[rows], "passage_ids": passages,
                "passage_mask": self._passage_mask(passages),
                "distill": np.full(len(rows), self.distill, np.int32)}
