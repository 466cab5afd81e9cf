"""EntQA's reader (dissertation sec. 6.2.2-6.2.3): a BERT-family cross-encoder reads each (passage, candidate
entity) pair, finds the candidate's mentions in the passage (start / end logits on every position) or rejects
it (the [CLS] span), and reranks the passage's K candidates (a logit on [CLS], softmax over K).

Training (eq. 6.2, `reader_objective.reader_loss`): each training passage has K = `num_candidates` (64)
candidates, its golds (all of them: G slots, G the most golds any training passage has, unused ones masked
out) and K - G negatives drawn uniformly, without replacement, at every step from the retriever's candidates
of that passage minus the golds (`candidate_file` of the train split: the authors' code shuffles them per
epoch), topped up with random KB entities when the file lists fewer. All K pairs of a passage are in one batch
on device; a batch carries the passage's first segment and candidate rows and the step packs the pairs
against the resident entity table. Passages without golds train too: every candidate's gold is [CLS].

Evaluation: every passage of the evaluation split with its top `eval_num_candidates` (100) retrieved
candidates; per candidate the top `top_p` (3) spans above [CLS], at most `max_answer_len` (10) pieces, each
scored p_rerank * p_start * p_end (`reader_objective`), then `linking`: spans mapped to characters, merged
across overlapping passages (the best score), kept above `threshold` (gamma = 0.05). Metrics: GERBIL's InKB
micro P/R/F1 (strong matching), mention-detection F1, the passage- and document-level accept/reject F1 of
candidate entities, how many passages are right, over-, under- or neither (Table 6.4's categories), the
candidates' recall of the gold entities, and the best threshold on this split with its F1 (appendix D.1's
calibration, `python -m kipjax.methods.entqa.calibrate`).

Candidate files come from the trained retriever: `python -m kipjax.index --gin_file=RETRIEVER.gin
--checkpoint=DIR --split=SPLIT --candidates=CANDIDATES_DIR` for the train and evaluation splits.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from kipjax import partitioning
from kipjax.data import candidates as candidate_files
from kipjax.data.entity_kb import read_kilt_entities
from kipjax.data.padding import pad_rows, round_up
from kipjax.methods.base import Method, Metrics, Params
from kipjax.methods.encoder_setup import setup_encoder
from kipjax.methods.entqa import inputs, linking, reader_objective
from kipjax.methods.entqa.data import PassageExample, SplitDocuments, gold_recall, passage_id, split_name
from kipjax.methods.joint_rerank import init_cross_encoder, pack_pairs
from kipjax.metrics import el as el_metrics
from kipjax.models import layers
from kipjax.models.bert import BertConfig, BertEncoder
from kipjax.retrieval import corpus_encoding, negatives


class ReaderModel(nn.Module):
    """The cross-encoder and its heads: start / end logits on every position, a rerank logit on [CLS] (the
    authors' heads are linear layers without dropout, freshly initialised even over a SQuAD-tuned encoder)."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array,
                 deterministic: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
        cfg = self.config
        states = BertEncoder(cfg, name="encoder")(input_ids, attention_mask, token_type_ids,
                                                  deterministic=deterministic).last_hidden_state
        head = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    kernel_init=nn.initializers.normal(cfg.initializer_range))
        span = layers.Dense(2, ("embed", None), name="span_head", **head)(states).astype(jnp.float32)
        rerank = layers.Dense(1, ("embed", None), name="rerank_head", **head)(states[:, 0]).astype(jnp.float32)
        return span[..., 0], span[..., 1], rerank[:, 0]


@gin.configurable
class EntqaReader(Method):
    """Trains and evaluates EntQA's reader on AIDA-layout documents, a KILT-layout KB and the retriever's
    candidate files (module docstring).

    Args:
      kb_file / train_file / eval_file / test_file / *_split / title_map_file / passage_length / stride /
        topic_mode / entity_tokens: as for `EntqaRetriever` (use the same values: passages are matched by
        `passage_id`).
      candidates_dir: holds `candidates_{split}.json` of the train and evaluation splits.
      tokenizer_dir / pretrained / encoder_config / compute_dtype / remat / scan_layers: the encoder, as for
        the other BERT-family methods (`pretrained`: e.g. ELECTRA-large fine-tuned on SQuAD 2.0).
      num_candidates / eval_num_candidates: K in training (64) and at evaluation (100).
      max_tokens: the pair length (180); the passage's segment gets `max_tokens - entity_tokens + 1`.
      loss_reduction: 'code' (the authors' averaged terms, / 3) or 'chapter' (eq. 6.2's sums).
      top_p / max_answer_len / threshold / filter_span / overlaps: inference (`reader_objective.select_spans`,
        `linking.final_links`).
      eval_batch_size: passages per evaluation step (each with `eval_num_candidates` pairs).
    """

    def __init__(
        self,
        kb_file: str = gin.REQUIRED,
        train_file: str = gin.REQUIRED,
        eval_file: str = gin.REQUIRED,
        candidates_dir: str = gin.REQUIRED,
        train_split: str | None = "train",
        eval_split: str | None = "testa",
        test_file: str | None = None,
        test_split: str | None = "testb",
        tokenizer_dir: str | None = None,
        pretrained: str | None = None,
        encoder_config: BertConfig | None = None,
        title_map_file: str | None = None,
        num_candidates: int = 64,
        eval_num_candidates: int = 100,
        passage_length: int = 32,
        stride: int = 16,
        topic_mode: str = "first_token",
        entity_tokens: int = inputs.ENTITY_TOKENS,
        max_tokens: int = inputs.READER_TOKENS,
        loss_reduction: str = "code",
        top_p: int = 3,
        max_answer_len: int = 10,
        threshold: float = 0.05,
        filter_span: bool = False,
        overlaps: str = "keep",
        eval_batch_size: int = 2,
        compute_dtype: str = "float32",
        remat: bool = False,
        scan_layers: bool = False,
    ):
        if loss_reduction not in reader_objective.REDUCTIONS:
            raise ValueError(f"EntqaReader.loss_reduction must be one of {reader_objective.REDUCTIONS}, "
                             f"got {loss_reduction!r}")
        if overlaps not in linking.OVERLAPS:
            raise ValueError(f"EntqaReader.overlaps must be one of {linking.OVERLAPS}, got {overlaps!r}")
        if max_tokens - entity_tokens + 1 < passage_length:
            raise ValueError(f"EntqaReader.max_tokens={max_tokens} leaves the passage segment "
                             f"{max_tokens - entity_tokens + 1} pieces next to {entity_tokens}-piece entities; "
                             f"it needs at least passage_length={passage_length}")
        setup = setup_encoder("EntqaReader", os.path.dirname(kb_file), tokenizer_dir,
                              pretrained, encoder_config, compute_dtype, remat, scan_layers)
        self.tokenizer, self.pretrained_params = setup.tokenizer, setup.pretrained_params
        self.model = ReaderModel(setup.config)
        self.num_candidates, self.eval_num_candidates = num_candidates, eval_num_candidates
        self.first_tokens = max_tokens - entity_tokens + 1
        self.answer_positions = passage_length - 1  # [CLS] and at most passage_length - 2 content pieces
        self.loss_reduction, self.top_p, self.max_answer_len = loss_reduction, top_p, max_answer_len
        self.threshold, self.filter_span, self.overlaps = threshold, filter_span, overlaps
        self.eval_batch_size, self.candidates_dir = eval_batch_size, candidates_dir

        self.kb = read_kilt_entities(kb_file)
        ids, mask = inputs.entity_table(self.tokenizer, self.kb.titles, self.kb.descriptions, entity_tokens)
        self._entity_table = {"entity_input_ids": jnp.asarray(ids), "entity_attention_mask": jnp.asarray(mask)}
        self.documents = SplitDocuments.from_files(
            self.kb, self.tokenizer, [("train", train_file, train_split), ("eval", eval_file, eval_split),
                                      ("test", test_file, test_split)], title_map_file,
            length=passage_length, stride=stride, topic_mode=topic_mode)
        self.train_split, self.eval_split = split_name(train_split, "train"), split_name(eval_split, "eval")
        self.train = self.documents.passages(self.train_split)
        self.max_golds = max(1, max(len(e.gold_entities) for e in self.train))
        if self.max_golds >= num_candidates:
            raise ValueError(f"EntqaReader.num_candidates={num_candidates} must exceed the most golds of a "
                             f"training passage ({self.max_golds})")
        self.eval = self.documents.passages(self.eval_split)
        self.eval_records = self.documents.records(self.eval_split)
        self.eval_rows, self.eval_valid = self.read_candidates(self.eval_split, self.eval, eval_num_candidates)
        self._mesh_tables: tuple[Any, dict[str, jax.Array]] | None = None  # (mesh, the table replicated on it)

    # -------------------------------------------------------------------------------------------- inputs

    def read_candidates(self, split: str, examples: Sequence[PassageExample], k: int
                        ) -> tuple[np.ndarray, np.ndarray]:
        """The retriever's top-k KB rows per passage ([P, k]) and which are filled."""
        return candidate_files.read_candidates(candidate_files.candidates_path(self.candidates_dir, split),
                                               [passage_id(e.passage) for e in examples], self.kb.rows, k)

    def passage_arrays(self, examples: Sequence[PassageExample]) -> dict[str, np.ndarray]:
        """Each passage's first segment (`inputs.reader_first_part`), its mask and its number of pieces."""
        rows = [inputs.reader_first_part(self.tokenizer, e.passage.piece_ids, e.topic_ids, self.first_tokens)
                for e in examples]
        lengths = np.array([len(r) for r in rows])
        return {"first_input_ids": pad_rows(rows, self.first_tokens, pad=self.tokenizer.pad_token_id),
                "first_attention_mask": (np.arange(self.first_tokens)[None] < lengths[:, None]).astype(np.int32),
                "passage_length": np.array([len(e.passage.piece_ids) for e in examples], np.int32)}

    def gold_arrays(self, examples: Sequence[PassageExample]) -> dict[str, np.ndarray]:
        """Gold KB rows [P, G] (-1 padded) and their start / end position masks [P, G, A] (positions in the
        pair: [CLS] at 0, the passage's piece i at i + 1)."""
        golds = pad_rows([list(e.gold_entities) for e in examples], self.max_golds, pad=-1)
        starts = np.zeros((len(examples), self.max_golds, self.answer_positions), np.uint8)
        ends = np.zeros_like(starts)
        for p, example in enumerate(examples):
            for g, spans in enumerate(example.gold_spans[:self.max_golds]):
                for first, last in spans:
                    starts[p, g, first + 1] = ends[p, g, last + 1] = 1
        return {"gold_entities": golds, "gold_starts": starts, "gold_ends": ends}

    # ----------------------------------------------------------------------------------- method contract

    def train_examples(self) -> dict[str, np.ndarray]:
        """Passages, golds and each passage's pool of retrieved non-gold candidates (-1 padded)."""
        rows, valid = self.read_candidates(self.train_split, self.train, self.eval_num_candidates)
        golds = [set(e.gold_entities) for e in self.train]
        pool = pad_rows([[r for r, v in zip(row, ok) if v and r not in g] for row, ok, g in
                         zip(rows.tolist(), valid.tolist(), golds)], rows.shape[1], pad=-1)
        return {**self.passage_arrays(self.train), **self.gold_arrays(self.train), "negative_pool": pool}

    def tables(self) -> dict[str, jax.Array]:
        return self._entity_table

    def init(self, rng: jax.Array, batch: Mapping[str, Any]) -> Params:
        return init_cross_encoder(self.model, rng, batch["first_input_ids"], batch["first_attention_mask"],
                                  batch["tables"], self.pretrained_params)

    def logits(self, params: Params, batch: Mapping[str, Any], rows: jax.Array, deterministic: bool = True,
               rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """start / end logits [B, K, L] and rerank logits [B, K] of the passages' candidates `rows` [B, K], and
        the answer mask [B, K, L] ([CLS] and the passage's pieces)."""
        t = batch["tables"]
        ids, mask, types = pack_pairs(batch["first_input_ids"], batch["first_attention_mask"],
                                      t["entity_input_ids"][rows], t["entity_attention_mask"][rows])
        b, k, length = ids.shape
        flat = lambda x: x.reshape(b * k, length)
        start, end, rerank = self.model.apply({"params": params}, flat(ids), flat(mask), flat(types),
                                              deterministic=deterministic,
                                              rngs=None if deterministic else {"dropout": rng})
        answer = jnp.arange(length)[None, None, :] <= batch["passage_length"][:, None, None]
        return start.reshape(b, k, length), end.reshape(b, k, length), rerank.reshape(b, k), jnp.broadcast_to(
            answer, (b, k, length))

    def candidates(self, batch: Mapping[str, Any], rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(KB rows [B, K], gold candidates [B, K], valid candidates [B, K]): the gold slots, then negatives."""
        golds = batch["gold_entities"]
        num_negatives = self.num_candidates - golds.shape[1]
        random_rng, pool_rng = jax.random.split(rng)
        random = negatives.sample_random_negatives(random_rng, golds, len(self.kb), num_negatives)
        drawn = negatives.sample_from_pool(pool_rng, batch["negative_pool"], num_negatives, random)
        return negatives.gold_slots_then(golds, drawn)

    def loss(self, params: Params, batch: Mapping[str, Any], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        dropout_rng, candidate_rng = jax.random.split(rng)
        rows, gold, valid = self.candidates(batch, candidate_rng)
        start, end, rerank, answer = self.logits(params, batch, rows, deterministic=False, rng=dropout_rng)
        length = start.shape[-1]
        num_golds = batch["gold_entities"].shape[1]

        def span_labels(gold_positions: jax.Array) -> jax.Array:  # [B, G, A] -> [B, K, L]; negatives: [CLS]
            golds = jnp.pad(gold_positions.astype(bool), ((0, 0), (0, 0), (0, length - gold_positions.shape[-1])))
            cls_only = jnp.zeros((rows.shape[0], rows.shape[1] - num_golds, length), bool).at[..., 0].set(True)
            return jnp.concatenate([golds, cls_only], axis=1)

        loss = reader_objective.reader_loss(start, end, rerank, answer, span_labels(batch["gold_starts"]),
                                            span_labels(batch["gold_ends"]), gold, valid, self.loss_reduction)
        best = jnp.argmax(jnp.where(valid, rerank, -jnp.inf), axis=-1)
        has_gold = gold.any(-1)
        hit = jnp.take_along_axis(gold, best[:, None], axis=-1)[:, 0] & has_gold
        return loss, {"rerank_top1_is_gold": jnp.sum(hit) / jnp.maximum(jnp.sum(has_gold), 1)}

    # --------------------------------------------------------------------------------------- inference

    def span_count(self) -> int:
        """How many ranked spans per candidate inference asks for: top_p + 1 reach [CLS] or the cap;
        `filter_span` may skip nested ones, so it looks further."""
        return min(self.answer_positions ** 2, (4 if self.filter_span else 1) * self.top_p + 1)

    def _predict(self, params_and_tables: tuple[Params, Mapping[str, jax.Array]], packed: jax.Array,
                 _: jax.Array) -> jax.Array:
        """The ranked spans of a batch of `pack_passages` rows: [B, 3 K C] float32, (log p, start, end) x K x C
        (C = `span_count`), in the shape `corpus_encoding` shards over hosts and devices."""
        params, tables = params_and_tables
        f = self.first_tokens
        k = (packed.shape[1] - 2 * f - 1) // 2
        batch = {"tables": tables, "first_input_ids": packed[:, :f], "first_attention_mask": packed[:, f:2 * f],
                 "passage_length": packed[:, 2 * f]}
        rows, valid = packed[:, 2 * f + 1:2 * f + 1 + k], packed[:, 2 * f + 1 + k:].astype(bool)
        start, end, rerank, answer = self.logits(params, batch, rows)
        a = self.answer_positions
        log_probs = reader_objective.span_log_probs(start[..., :a], end[..., :a], rerank, answer[..., :a], valid,
                                                    self.max_answer_len)
        best, starts, ends = reader_objective.top_spans(log_probs, self.span_count())
        return jnp.stack([best, starts.astype(jnp.float32), ends.astype(jnp.float32)], axis=1).reshape(
            len(packed), -1)

    def pack_passages(self, examples: Sequence[PassageExample], rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """[P, 2 F + 1 + 2 K] int32: each passage's first segment, its mask, its length, its candidates' KB rows
        and which are filled; one table, so that the corpus encoder's sharded loop can run the reader."""
        arrays = self.passage_arrays(examples)
        return np.concatenate([arrays["first_input_ids"], arrays["first_attention_mask"],
                               arrays["passage_length"][:, None], rows, valid], axis=1).astype(np.int32)

    def passage_links(self, params: Params, examples: Sequence[PassageExample], rows: np.ndarray,
                      valid: np.ndarray) -> list[list[linking.ScoredLink]]:
        """Every passage's kept spans as scored document links (before the threshold). The reader runs on device
        in batches of `eval_batch_size` passages x K pairs, the passages shared out over hosts and devices as
        `corpus_encoding` shares out a corpus; every host gets every passage's spans and selects on the host."""
        mesh = partitioning.current_mesh()
        if self._mesh_tables is None or self._mesh_tables[0] != mesh:
            self._mesh_tables = mesh, partitioning.put_replicated(self._entity_table, mesh)
        step = jax.process_count() * partitioning.data_parallel_size(mesh)
        ranked = corpus_encoding.encode_everywhere(
            self._predict, (params, self._mesh_tables[1]), self.pack_passages(examples, rows, valid), None, mesh=mesh,
            batch_size=round_up(self.eval_batch_size, step), desc="read")
        log_probs, starts, ends = np.moveaxis(ranked.reshape(len(examples), 3, rows.shape[1], -1), 1, 0)
        starts, ends = starts.astype(np.int64), ends.astype(np.int64)
        keep = reader_objective.select_spans(log_probs, starts, ends, self.top_p, self.filter_span)
        return [linking.passage_links(e.passage, rows[i], keep[i], log_probs[i], starts[i], ends[i], self.kb.titles)
                for i, e in enumerate(examples)]

    def evaluate(self, params: Params) -> Metrics:
        per_passage = self.passage_links(params, self.eval, self.eval_rows, self.eval_valid)
        scored = linking.merge_passages(self.eval, per_passage)
        gold = {passage_id(e.passage): {self.kb.titles[g] for g in e.gold_entities} for e in self.eval}
        accepted = {passage_id(e.passage): {link.entity for link in links if link.score > self.threshold}
                    for e, links in zip(self.eval, per_passage)}
        metrics = linking.link_metrics(scored, self.eval_records, self.threshold, self.overlaps, (gold, accepted))
        errors = el_metrics.error_categories(
            {passage_id(e.passage): {(*e.passage.char_span(f, l), t) for f, l, t in e.passage.mentions}
             for e in self.eval},
            {passage_id(e.passage): {link[:3] for link in links if link.score > self.threshold}
             for e, links in zip(self.eval, per_passage)})
        return {**metrics, **{f"passages_{c}": errors[c] for c in el_metrics.ERROR_CATEGORIES},
                f"candidate_recall@{self.eval_num_candidates}": self.candidate_recall()}

    def candidate_recall(self) -> float:
        """The share of the evaluation passages' (passage, gold entity) pairs among its candidates."""
        return gold_recall(self.eval, (row[ok] for row, ok in zip(self.eval_rows, self.eval_valid)))
