"""TACO (dissertation chapter 4): one T5 dual encoder (ST5-EncDec, shared by queries and passages) trained on
several retrieval tasks at once over one passage knowledge base, in the authors' recipe:

- a warmup stage (`warmup_epochs`, 20 in the chapter) with BM25 hard negatives (bm25s over the passages, the
  gold rows excluded), then `episodes` ANCE episodes (8) of `episode_epochs` epochs (3): before each, the
  whole corpus is encoded with the current model and every training query's top non-gold passages become its
  hard-negative pool; each stage is its own run with a fresh optimizer and learning-rate schedule
  (`kipjax.stages`), starting from the previous stage's parameters;
- every batch holds a fixed number of queries of each task (Appendix B.2, `data.batch_composition`), and each
  task's loss is NCE over its own sub-batch: the query's positive against the positives and hard negatives of
  every query of the same task (in-batch negatives, across devices: the step sees the global batch), with
  `hard_negatives` (2) drawn per query and epoch from its pool;
- the last `adaptive_episodes` episodes (1) combine the task gradients with TACO's adaptive learning
  (`kipjax.optim.task_sensitivity_combiner`; with more than one, the temperature decays by `tau_decay` per
  episode before the last); the others minimise the mean of the task losses.

Corpus encoding (`kipjax.retrieval.corpus_encoding`) is shared out over every device of every host, each host
keeping (and, with `encoding_dir`, writing, resumably) the rows its devices hold; the exact search runs over
that sharded table on the devices, or ScaNN over each host's rows (`search='scann'`).

Evaluation encodes the corpus, retrieves `eval_passages` (100) passages for every dev query of every task,
maps them to pages in rank order and scores the pages with KILT's official retrieval metrics
(`kipjax.metrics.kilt`): `rprec_avg` (the chapter's average page-level R-precision), `rprec_{task}` and
`success_rate@5_{task}`; with `guess_dir` it writes each task's KILT guess file.

`query_encoder='per_task'` is Table 4.3's "task query encoder" variant, as the authors' `split_query_encoder`
builds it: one query encoder per task, each a copy of the initial model, and a separate passage encoder shared
by all tasks; params are then `{"passages": ..., "queries_<task>": ...}`.

Query tokens are never the pad id 0 (every query ends with EOS), so masks are `ids != 0`.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kipjax import cli, partitioning
from kipjax.data.padding import pad_rows
from kipjax.methods.base import Method, Metrics, Params
from kipjax.methods.encoder_setup import COMPUTE_DTYPES
from kipjax.methods.model_source import check_model_source
from kipjax.methods.taco import inputs
from kipjax.methods.taco.data import TacoData, TacoDataSettings, batch_composition, load_taco_data
from kipjax.methods.taco.encoder import ST5EncDec, load_st5_encdec, scaled_t5_init
from kipjax.metrics import kilt as kilt_metrics
from kipjax.models.t5 import T5Config
from kipjax.optim.task_combiners import task_sensitivity_combiner
from kipjax.partitioning import fill_boxed
from kipjax.retrieval import corpus_encoding
from kipjax.run_log import atomic_write_text
from kipjax.stages import Stage

NO_PASSAGE = -1
QUERY_ENCODERS = ("shared", "per_task")
PASSAGE_ENCODER = "passages"


def task_rows(sizes: Sequence[int], task: int, hosts: int) -> np.ndarray:
    """Global batch rows of `task` when every host holds its share of each task's rows, task after task (as
    `TacoRetrieval.batch_from_features` orders them) and the global batch is the hosts' rows in host order."""
    per_host = [size // hosts for size in sizes]
    start = sum(per_host[:task])
    width = sum(per_host)
    return np.concatenate([np.arange(h * width + start, h * width + start + per_host[task]) for h in range(hosts)])


def pick_negatives(pool: np.ndarray, count: int, num_passages: int, gold: Sequence[np.ndarray],
                   rng: np.random.Generator) -> np.ndarray:
    """[N, count] passage rows: `count` distinct draws from each query's pool (rows >= 0), topped up with random
    non-gold passages when the pool is smaller."""
    out = np.zeros((len(pool), count), np.int32)
    for i, row in enumerate(pool):
        valid = row[row >= 0]
        chosen = list(rng.choice(valid, min(count, len(valid)), replace=False)) if len(valid) else []
        excluded = set(gold[i].tolist()) | set(chosen)
        while len(chosen) < count:
            candidate = int(rng.integers(num_passages))
            if candidate not in excluded or len(excluded) >= num_passages:
                chosen.append(candidate)
                excluded.add(candidate)
        out[i] = chosen
    return out


def params_fingerprint(params: Params) -> str:
    """A digest of the params' values (per-leaf sums): names the encoder an encoded corpus came from."""
    sums = np.asarray(jax.jit(lambda p: jnp.stack([jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(p)]
                                                  + [jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in
                                                     jax.tree.leaves(p)]))(params))
    return hashlib.sha256(sums.tobytes()).hexdigest()[:32]


def _query_key(task_name: str) -> str:
    return f"queries_{task_name}"


def _gold_matrix(gold: Sequence[np.ndarray]) -> np.ndarray:
    width = max(1, max(len(g) for g in gold))
    return pad_rows([g.tolist() for g in gold], width, pad=NO_PASSAGE)


@gin.configurable
class TacoRetrieval(Method):
    """Multi-task dense retrieval with task prefixes, ANCE episodes and adaptive learning (module docstring).

    Args:
      data: the tasks, their files, the passage KB and the tokenizer (`kilt_data` / `demo_kilt_data`).
      pretrained: a local Hugging Face T5 directory (t5-base in the chapter); else `model_config` from scratch.
      scaled_init: the authors' scaled T5 init for fp16 (`encoder.scaled_t5_init`).
      batch_size: queries per step over all tasks (120); must equal `Trainer.batch_size`.
      mixing_temperature: c of B_k ~ (N_k / N)^(1/c) (4).
      hard_negatives: hard negatives per query per step (2); negative_pool: the mined pool they are drawn from
        (64, the authors' `num_hards`; the chapter retrieves the top 110 and keeps the non-gold ones).
      warmup_epochs / episodes / episode_epochs / adaptive_episodes / adaptive_combiner / tau_decay: the recipe.
      encode_batch_size: texts per encoder call when encoding the corpus and queries.
      eval_passages: passages retrieved per dev query; eval_ks: KILT's k values; eval_max_queries: the first
        N dev queries of each task only; guess_dir: write KILT guess files there.
      chunk_size: passages scored per step of the exact top-k scan.
      query_encoder: 'shared' (one encoder for queries and passages) or 'per_task' (module docstring).
      search: 'exact' (on the devices, the passage table sharded over the mesh, in `table_dtype`) or 'scann'
        (each host indexes its rows with ScaNN): how mining and evaluation retrieve.
      encoding_dir: where the encoded corpus is written, each host its shard, resumable
        (`kipjax.retrieval.corpus_encoding`); None keeps it in memory only.
    """

    def __init__(
        self,
        data: TacoDataSettings = gin.REQUIRED,
        batch_size: int = gin.REQUIRED,
        pretrained: str | None = None,
        model_config: T5Config | None = None,
        scaled_init: bool = False,
        mixing_temperature: float = 4.0,
        hard_negatives: int = 2,
        negative_pool: int = 64,
        warmup_epochs: int = 20,
        episodes: int = 8,
        episode_epochs: int = 3,
        adaptive_episodes: int = 1,
        adaptive_combiner: Callable[..., Any] = task_sensitivity_combiner,
        tau_decay: float = 1.0,
        encode_batch_size: int = 256,
        eval_passages: int = 100,
        eval_ks: Sequence[int] = (1, 5, 10, 20),
        eval_max_queries: int | None = None,
        guess_dir: str | None = None,
        chunk_size: int = 16384,
        compute_dtype: str = "float32",
        remat: bool = False,
        query_encoder: str = "shared",
        search: str = "exact",
        table_dtype: str = "float32",
        encoding_dir: str | None = None,
    ):
        if query_encoder not in QUERY_ENCODERS:
            raise ValueError(f"TacoRetrieval.query_encoder must be one of {QUERY_ENCODERS}, got {query_encoder!r}")
        check_model_source("TacoRetrieval", "T5", pretrained, model_config, data.tokenizer_dir)
        if not 0 <= adaptive_episodes <= episodes:
            raise ValueError(f"TacoRetrieval.adaptive_episodes must be within [0, episodes={episodes}], got "
                             f"{adaptive_episodes}")
        overrides = {"dtype": COMPUTE_DTYPES[compute_dtype], "remat": remat}
        self.pretrained_params = None
        if pretrained is not None:
            self.model, self.pretrained_params = load_st5_encdec(pretrained, **overrides)
        else:
            self.model = ST5EncDec(dataclasses.replace(model_config, **overrides))
        self.scaled_init = scaled_init
        self.data: TacoData = load_taco_data(data)
        if self.model.config.vocab_size < len(self.data.tokenizer):
            raise ValueError(f"TacoRetrieval: the model's vocab_size {self.model.config.vocab_size} is smaller than "
                             f"the tokenizer's {len(self.data.tokenizer)} tokens")
        self.num_tasks = len(self.data.tasks)
        self.batch_sizes = list(batch_composition(self.data, batch_size, mixing_temperature).values())
        self.hard_negatives, self.negative_pool = hard_negatives, negative_pool
        self.warmup_epochs, self.episodes, self.episode_epochs = warmup_epochs, episodes, episode_epochs
        self.adaptive_episodes, self.adaptive_combiner, self.tau_decay = adaptive_episodes, adaptive_combiner, tau_decay
        self.encode_batch_size, self.chunk_size = encode_batch_size, chunk_size
        self.eval_passages, self.eval_ks = eval_passages, tuple(eval_ks)
        self.eval_max_queries, self.guess_dir = eval_max_queries, guess_dir
        self.gold = [_gold_matrix(t.gold_rows) for t in self.data.tasks]
        self.pools = [np.full((len(t.train), negative_pool), NO_PASSAGE, np.int32) for t in self.data.tasks]
        self.picked = [np.zeros((len(t.train), hard_negatives), np.int32) for t in self.data.tasks]
        self.query_encoder = query_encoder
        if search not in corpus_encoding.SEARCH_KINDS:
            raise ValueError(f"TacoRetrieval.search must be one of {corpus_encoding.SEARCH_KINDS}, got {search!r}")
        if table_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"TacoRetrieval.table_dtype must be one of {sorted(COMPUTE_DTYPES)}, got {table_dtype!r}")
        self.search_kind, self.table_dtype, self.encoding_dir = search, table_dtype, encoding_dir

    # ------------------------------------------------------------------------------------------- recipe

    def stages(self) -> list[Stage]:
        stages = [Stage("warmup", epochs=self.warmup_epochs)]
        for episode in range(1, self.episodes + 1):
            from_last = self.episodes - episode  # 0 for the last episode
            combiner = None
            if from_last == 0 and self.adaptive_episodes:
                combiner = self.adaptive_combiner
            elif from_last < self.adaptive_episodes:  # earlier adaptive episodes: a hotter temperature
                tau = self._adaptive_tau() * self.tau_decay ** from_last
                combiner = functools.partial(self.adaptive_combiner, tau=tau)
            stages.append(Stage(f"episode_{episode}", epochs=self.episode_epochs, gradient_combiner=combiner))
        return stages

    def _adaptive_tau(self) -> float:
        """The temperature the combiner factory defaults to (or gin binds)."""
        return self.adaptive_combiner(num_tasks=max(self.num_tasks, 1)).tau

    def on_stage_start(self, params: Params, stage: int, rng: jax.Array) -> None:
        """Stage 0: BM25 pools; later stages: pools mined with the current model."""
        self.pools = self.bm25_pools() if stage == 0 else self.mine_pools(params)

    def on_epoch_start(self, params: Params, epoch: int, rng: jax.Array) -> None:
        """This epoch's `hard_negatives` per query, drawn from its pool."""
        seed = np.asarray(jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng)
        generator = np.random.default_rng(seed.astype(np.uint32).tolist())
        self.picked = [pick_negatives(pool, self.hard_negatives, len(self.data.corpus), task.gold_rows, generator)
                       for pool, task in zip(self.pools, self.data.tasks)]

    def state_dict(self) -> dict[str, Any]:
        return {**{f"pool_{i}": jnp.asarray(p) for i, p in enumerate(self.pools)},
                **{f"picked_{i}": jnp.asarray(p) for i, p in enumerate(self.picked)}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pools = [np.asarray(state[f"pool_{i}"]) for i in range(self.num_tasks)]
        self.picked = [np.asarray(state[f"picked_{i}"]) for i in range(self.num_tasks)]

    # ---------------------------------------------------------------------------------------- negatives

    def bm25_pools(self) -> list[np.ndarray]:
        """Per task [N, pool]: the BM25 top passages of every training query, gold rows left out."""
        import bm25s
        logging.getLogger("bm25s").setLevel(logging.WARNING)  # its index build logs at DEBUG

        corpus = self.data.corpus
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize([f"{t} {x}" for t, x in zip(corpus.titles, corpus.texts)],
                                       stopwords="en", show_progress=False), show_progress=False)
        pools = []
        for task, gold in zip(self.data.tasks, self.gold):
            depth = min(len(corpus), self.negative_pool + gold.shape[1])
            queries = bm25s.tokenize([e.input for e in task.train], stopwords="en", show_progress=False)
            ranked, _ = retriever.retrieve(queries, k=depth, show_progress=False, n_threads=1)
            pools.append(self._without_gold(np.asarray(ranked), gold))
        return pools

    def _without_gold(self, ranked: np.ndarray, gold: np.ndarray) -> np.ndarray:
        keep = ~(ranked[:, :, None] == gold[:, None, :]).any(-1) & (ranked >= 0)
        pool = np.full((len(ranked), self.negative_pool), NO_PASSAGE, np.int32)
        for i in range(len(ranked)):
            row = ranked[i][keep[i]][:self.negative_pool]
            pool[i, :len(row)] = row
        return pool

    def mine_pools(self, params: Params) -> list[np.ndarray]:
        """Per task [N, pool]: the current model's top non-gold passages of every training query."""
        passages = self.encode_passages(params)
        pools = []
        for k, (task, gold) in enumerate(zip(self.data.tasks, self.gold)):
            queries = self.encode_queries(params, k, task.train_query_ids, f"encode {task.task.name} queries")
            _, top = self.search(queries, passages, self.negative_pool, gold)
            pools.append(top.astype(np.int32))
        return pools

    # -------------------------------------------------------------------------------------- features

    def batch_from_features(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A composed batch (this host's rows, shard after shard) -> rows task after task, with the passage
        tokens of each query's positive and this epoch's hard negatives gathered from the knowledge base."""
        order = np.argsort(features["task_index"], kind="stable")
        task_index, query_index = features["task_index"][order], features["query_index"][order]
        negatives = np.stack([self.picked[t][q] for t, q in zip(task_index, query_index)])
        rows = np.concatenate([features["positive"][order][:, None], negatives], axis=1)  # [b, 1 + H]
        passages = self.data.passage_ids[rows].astype(np.int32)
        return {"query_input_ids": features["query_input_ids"][order], "passage_input_ids": passages,
                "passage_mask": (passages != 0).astype(np.int32)}

    # ------------------------------------------------------------------------------------------- model

    def init(self, rng: jax.Array, batch: Mapping[str, Any]) -> Params:
        ids = batch["query_input_ids"][:1]
        params = self.model.init(rng, ids, (ids != 0).astype(jnp.int32))["params"]
        if self.pretrained_params is not None:
            params = fill_boxed(params, self.pretrained_params)
        params = scaled_t5_init(params) if self.scaled_init else params
        if self.query_encoder == "shared":
            return params
        return {PASSAGE_ENCODER: params, **{_query_key(t.task.name): params for t in self.data.tasks}}

    def passage_params(self, params: Params) -> Params:
        return params if self.query_encoder == "shared" else params[PASSAGE_ENCODER]

    def query_params(self, params: Params, task: int) -> Params:
        return params if self.query_encoder == "shared" else params[_query_key(self.data.tasks[task].task.name)]

    def _embed(self, params: Params, ids: jax.Array, mask: jax.Array, rng: jax.Array | None) -> jax.Array:
        return self.model.apply({"params": params}, ids, mask, deterministic=rng is None,
                                rngs=None if rng is None else {"dropout": rng})

    def task_loss(self, params: Params, batch: Mapping[str, Any], task: int, rng: jax.Array
                  ) -> tuple[jax.Array, Metrics]:
        rows = task_rows(self.batch_sizes, task, jax.process_count())
        length = inputs.query_tokens(self.data.tasks[task].task, self.data.settings.prefix_mode)
        queries = batch["query_input_ids"][rows][:, :length]
        passages, passage_mask = batch["passage_input_ids"][rows], batch["passage_mask"][rows]
        count, group = passages.shape[:2]
        query_rng, passage_rng = jax.random.split(rng)
        q = self._embed(self.query_params(params, task), queries, (queries != 0).astype(jnp.int32), query_rng)
        p = self._embed(self.passage_params(params), passages.reshape(count * group, -1),
                        passage_mask.reshape(count * group, -1), passage_rng)
        scores = q @ p.T  # [B_k, B_k (1 + H)]: every passage of the task's sub-batch
        labels = jnp.arange(count) * group
        loss = optax.softmax_cross_entropy_with_integer_labels(scores, labels).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(scores, -1) == labels)}

    def loss(self, params: Params, batch: Mapping[str, Any], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        """The mean of the task losses (naive multi-task learning)."""
        results = [self.task_loss(params, batch, k, jax.random.fold_in(rng, k)) for k in range(self.num_tasks)]
        metrics = {f"task_{k}/{name}": v for k, (_, m) in enumerate(results) for name, v in m.items()}
        return jnp.mean(jnp.stack([loss for loss, _ in results])), metrics

    # -------------------------------------------------------------------------------------- encoding

    def _encode(self, params: Params, ids: jax.Array, mask: jax.Array) -> jax.Array:
        return self._embed(params, ids, mask, None)

    def encode_passages(self, params: Params) -> tuple[np.ndarray, corpus_encoding.CorpusLayout]:
        """This host's rows of the encoded corpus and the layout (`corpus_encoding.encode_corpus`), written under
        `encoding_dir` (resumable, and reused by the next call with the same passage encoder) when set."""
        passage_params = self.passage_params(params)
        return corpus_encoding.encode_corpus(
            self._encode, passage_params, self.data.passage_ids, None, mesh=partitioning.current_mesh(),
            batch_size=self.encode_batch_size, out_dir=self.encoding_dir,
            fingerprint=f"{params_fingerprint(passage_params)} {os.path.abspath(self.data.settings.passages_file)}",
            desc="encode passages")

    def encode_queries(self, params: Params, task: int, query_ids: Sequence[Sequence[int]], desc: str) -> np.ndarray:
        """Task `task`'s queries, with that task's query encoder, [Q, H] on every host."""
        ids = pad_rows(query_ids, max(len(q) for q in query_ids))
        return corpus_encoding.encode_everywhere(self._encode, self.query_params(params, task), ids, None,
                                                 mesh=partitioning.current_mesh(),
                                                 batch_size=self.encode_batch_size, desc=desc)

    def search(self, queries: np.ndarray, passages: tuple[np.ndarray, corpus_encoding.CorpusLayout], k: int,
               gold: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k passage rows per query ([Q, k], -1 where fewer exist), `gold` rows excluded: exact on the
        devices (the table sharded over the mesh) or with ScaNN on each host's rows (`search`)."""
        local, layout = passages
        return corpus_encoding.search_corpus(self.search_kind, queries, local, layout, partitioning.current_mesh(),
                                             k, exclude=gold, table_dtype=COMPUTE_DTYPES[self.table_dtype],
                                             query_batch=self.encode_batch_size, chunk_size=self.chunk_size)

    # ------------------------------------------------------------------------------------------ evaluate

    def guesses(self, params: Params) -> dict[str, list[dict]]:
        """Per task, KILT guess rows for its dev queries: the retrieved passages' pages, in rank order."""
        passages = self.encode_passages(params)
        pages = self.data.corpus.wikipedia_ids
        out = {}
        for k, task in enumerate(self.data.tasks):
            dev = task.dev[:self.eval_max_queries]
            queries = self.encode_queries(params, k, task.dev_query_ids[:len(dev)], f"encode {task.task.name} dev")
            _, top = self.search(queries, passages, self.eval_passages)
            out[task.task.name] = [
                {"id": example.id, "input": example.input,
                 "output": [{"provenance": [{"wikipedia_id": str(pages[r])} for r in row if r >= 0]}]}
                for example, row in zip(dev, top)]
        return out

    def evaluate(self, params: Params) -> Metrics:
        guesses = self.guesses(params)
        metrics: dict[str, float] = {}
        for task in self.data.tasks:
            name = task.task.name
            gold = task.dev_rows[:len(guesses[name])]
            scores = kilt_metrics.retrieval_scores(gold, guesses[name], ks=self.eval_ks)
            metrics[f"rprec_{name}"] = scores["Rprec"]
            metrics[f"success_rate@5_{name}"] = scores.get("success_rate@5", 0.0)
            if self.guess_dir:
                os.makedirs(self.guess_dir, exist_ok=True)
                atomic_write_text(os.path.join(self.guess_dir, f"{name}-dev-guess.jsonl"),
                                  "".join(json.dumps(row) + "\n" for row in guesses[name]))
        metrics["rprec_avg"] = float(np.mean([metrics[f"rprec_{t.task.name}"] for t in self.data.tasks]))
        return metrics


# ------------------------------------------------------------------------------------------- commands

METHOD_BINDING = f"--gin_bindings={cli.METHOD_BINDING}"  # what the TACO commands add to the gin flags


def configured_taco(purpose: str) -> TacoRetrieval:
    """The config's METHOD, bound by `METHOD_BINDING`, or a clear exit when it is not TACO's."""
    return cli.configured_method(TacoRetrieval, "TACO", purpose)
