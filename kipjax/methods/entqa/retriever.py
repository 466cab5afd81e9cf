"""EntQA's retriever (dissertation sec. 6.2.1): a passage encoder and an entity encoder (BERT-family, [CLS]
vectors, dot product) trained with multi-label NCE (eq. 6.1) to propose the entities a passage mentions.

Training examples are the passages of the training documents that mention at least one KB entity (the
authors' code gives a passage without one a dummy label instead). Each has C = `num_candidates` (64)
candidates: its G gold slots (G the most golds any training passage has; unused slots are masked out),
then C - G negatives, `random_fraction` (90 %) of them uniform over the KB minus the golds, the rest hard:
drawn uniformly, without replacement, from the passage's `hard_pool` (100) best-scoring non-gold entities
under the current model. The pool is re-mined at the start of every epoch, the first included (as the
authors' code does), by encoding the KB and the passages on device (`kipjax.retrieval.corpus_encoding`).
(The authors' C counts the passage's own golds, so their passages with fewer golds get more negatives; with
fixed shapes, every passage here has C - G.)

`loss`: 'multilabel' (eq. 6.1: each gold against the negatives only), 'all_golds' or 'marginal' (the
ablation's variants, `kipjax.retrieval.nce`). Evaluation: recall@k over the evaluation passages' (passage,
gold entity) pairs, `recall@{k}`.

With a trained checkpoint, `python -m kipjax.index --gin_file=... --checkpoint=DIR --split=train
--candidates=CDIR` writes `CDIR/candidates_train.json`, every passage of the split with its top
`candidates_k` entities (the reader's input), and `--out=IDIR` the KB's embeddings and ScaNN index.

`pretrained` is a directory with `passage_encoder/` and `entity_encoder/` (what `kipjax.methods.entqa.blink`
writes from BLINK's checkpoint), or one BERT directory that initialises both.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from kipjax import partitioning
from kipjax.data import candidates as candidate_files
from kipjax.data.entity_kb import read_kilt_entities
from kipjax.data.padding import pad_rows
from kipjax.methods.base import Method, Metrics, Params
from kipjax.methods.encoder_setup import setup_encoder, with_pretrained_encoders
from kipjax.methods.entqa import inputs
from kipjax.methods.entqa.data import PassageExample, SplitDocuments, gold_recall, passage_id, split_name
from kipjax.methods.hard_nce import BiEncoder
from kipjax.models import hf
from kipjax.models.bert import BertConfig
from kipjax.retrieval import corpus_encoding, index, negatives, nce

LOSSES = {"multilabel": nce.multilabel_nce_loss, "all_golds": nce.all_golds_nce_loss,
          "marginal": nce.marginal_nce_loss}
ENCODER_DIRS = {"mention_encoder": "passage_encoder", "entity_encoder": "entity_encoder"}


@gin.configurable
class EntqaRetriever(Method):
    """Trains and evaluates EntQA's retriever on AIDA-layout documents and a KILT-layout KB (module docstring).

    Args:
      kb_file: KILT knowledge-source JSON lines (`kipjax.data.entity_kb`).
      train_file / eval_file / test_file: AIDA-YAGO2 TSV files (one may hold all splits); train_split /
        eval_split / test_split pick documents by their split (None: every document of the file, named
        'train' / 'eval' / 'test' for `--split`).
      tokenizer_dir: default `pretrained` (its passage encoder's); pretrained / encoder_config: module docstring.
      share_encoders: one encoder for passages and entities (a from-scratch demo learns much faster; the
        authors' encoders are BLINK's two).
      title_map_file: renames the documents' titles to the KB's.
      num_candidates, random_fraction, hard_pool, loss: the objective (module docstring).
      passage_length / stride / topic_mode: how documents are cut (`passages`); passage_tokens: the encoder's
        input budget for `[CLS] p [SEP] [unused1] topic`; entity_tokens: for entities (128).
      eval_ks: the k of recall@k; search: 'exact' (on the devices) or 'scann' (per host);
        candidates_k: candidates per passage in the reader's files; encode_batch_size / chunk_size: encoding
        and exact search.
    """

    def __init__(
        self,
        kb_file: str = gin.REQUIRED,
        train_file: str = gin.REQUIRED,
        eval_file: str = gin.REQUIRED,
        train_split: str | None = "train",
        eval_split: str | None = "testa",
        test_file: str | None = None,
        test_split: str | None = "testb",
        tokenizer_dir: str | None = None,
        pretrained: str | None = None,
        encoder_config: BertConfig | None = None,
        share_encoders: bool = False,
        title_map_file: str | None = None,
        num_candidates: int = 64,
        random_fraction: float = 0.9,
        hard_pool: int = 100,
        loss: str = "multilabel",
        passage_length: int = 32,
        stride: int = 16,
        topic_mode: str = "first_token",
        passage_tokens: int = 42,
        entity_tokens: int = inputs.ENTITY_TOKENS,
        eval_ks: Sequence[int] = (1, 10, 30, 100),
        search: str = "exact",
        candidates_k: int = 100,
        encode_batch_size: int = 256,
        chunk_size: int = 4096,
        compute_dtype: str = "float32",
        remat: bool = False,
    ):
        paired = pretrained is not None and all(os.path.isdir(os.path.join(pretrained, d))
                                                for d in ENCODER_DIRS.values())
        if share_encoders and paired:
            raise ValueError(f"EntqaRetriever.share_encoders cannot load {pretrained}'s two encoders into one")
        if loss not in LOSSES:
            raise ValueError(f"EntqaRetriever.loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if search not in corpus_encoding.SEARCH_KINDS:
            raise ValueError(f"EntqaRetriever.search must be one of {corpus_encoding.SEARCH_KINDS}, got {search!r}")
        if not 0.0 <= random_fraction <= 1.0:
            raise ValueError(f"EntqaRetriever.random_fraction must be in [0, 1], got {random_fraction}")
        first = os.path.join(pretrained, ENCODER_DIRS["mention_encoder"]) if paired else pretrained
        setup = setup_encoder("EntqaRetriever", os.path.dirname(kb_file), tokenizer_dir, first, encoder_config,
                              compute_dtype, remat)
        self.tokenizer, self.config = setup.tokenizer, setup.config
        self.pretrained = {"mention_encoder": setup.pretrained_params, "entity_encoder": setup.pretrained_params}
        if paired:
            self.pretrained["entity_encoder"] = hf.load_pretrained(
                os.path.join(pretrained, ENCODER_DIRS["entity_encoder"]), dtype=self.config.dtype, remat=remat)[1]
        self.model = BiEncoder(self.config, score_kind="dual", share_encoders=share_encoders)
        self.loss_fn, self.num_candidates, self.random_fraction = LOSSES[loss], num_candidates, random_fraction
        self.hard_pool_size, self.passage_tokens = hard_pool, passage_tokens
        self.eval_ks, self.encode_batch_size, self.chunk_size = tuple(sorted(eval_ks)), encode_batch_size, chunk_size
        self.search_kind, self.candidates_k = search, candidates_k

        self.kb = read_kilt_entities(kb_file)
        self.entity_ids, self.entity_mask = inputs.entity_table(self.tokenizer, self.kb.titles, self.kb.descriptions,
                                                                entity_tokens)
        self.documents = SplitDocuments.from_files(
            self.kb, self.tokenizer, [("train", train_file, train_split), ("eval", eval_file, eval_split),
                                      ("test", test_file, test_split)], title_map_file,
            length=passage_length, stride=stride, topic_mode=topic_mode)
        self.train = [e for e in self.documents.passages(split_name(train_split, "train")) if e.gold_entities]
        self.eval = self.documents.passages(split_name(eval_split, "eval"))
        if not self.train:
            raise ValueError(f"{train_file}: no training passage mentions a KB entity")
        self.max_golds = max(len(e.gold_entities) for e in self.train)
        if self.max_golds >= num_candidates or len(self.kb) <= num_candidates:
            raise ValueError(f"EntqaRetriever.num_candidates={num_candidates} must exceed the most golds of a "
                             f"passage ({self.max_golds}) and stay below the KB's {len(self.kb)} entities")
        self.train_ids, self.train_mask = self.passage_arrays(self.train)
        self.train_golds = self._gold_array(self.train, self.max_golds)
        self.pool = jnp.full((len(self.train), hard_pool), -1, jnp.int32)

    # -------------------------------------------------------------------------------------------- inputs

    def passage_arrays(self, examples: Sequence[PassageExample]) -> tuple[np.ndarray, np.ndarray]:
        rows = [inputs.retriever_passage(self.tokenizer, e.passage.piece_ids, e.topic_ids, self.passage_tokens)
                for e in examples]
        ids = pad_rows(rows, self.passage_tokens, pad=self.tokenizer.pad_token_id)
        return ids, (np.arange(self.passage_tokens)[None] < np.array([len(r) for r in rows])[:, None]).astype(
            np.int32)

    @staticmethod
    def _gold_array(examples: Sequence[PassageExample], width: int) -> np.ndarray:
        return pad_rows([list(e.gold_entities) for e in examples], max(width, 1), pad=-1)

    # ----------------------------------------------------------------------------------- method contract

    def train_examples(self) -> dict[str, np.ndarray]:
        """Passages, masks and gold rows; the trainer adds each row's `example_index`, which indexes the pools."""
        return {"passage_input_ids": self.train_ids, "passage_attention_mask": self.train_mask,
                "gold_entities": self.train_golds}

    def tables(self) -> dict[str, jax.Array]:
        return {"entity_input_ids": jnp.asarray(self.entity_ids), "entity_attention_mask": jnp.asarray(
            self.entity_mask), "hard_pool": self.pool}

    def init(self, rng: jax.Array, batch: Mapping[str, Any]) -> Params:
        t = batch["tables"]
        cand = t["entity_input_ids"][:1][None]
        params = self.model.init(rng, batch["passage_input_ids"][:1], batch["passage_attention_mask"][:1], cand,
                                 jnp.ones_like(cand))["params"]
        for name, loaded in self.pretrained.items():
            if loaded is not None:
                params = with_pretrained_encoders(params, loaded, self.config.vocab_size, (name,))
        return params

    def candidates(self, batch: Mapping[str, Any], rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(entity rows [B, C], gold mask [B, C], valid mask [B, C]): the gold slots, then the negatives."""
        golds = batch["gold_entities"]
        num_negatives = self.num_candidates - golds.shape[1]
        random_rng, hard_rng = jax.random.split(rng)
        random = negatives.sample_random_negatives(random_rng, golds, len(self.kb), num_negatives)
        pool = batch["tables"]["hard_pool"][batch["example_index"]]
        # a short pool (first steps) is topped up with random ones
        hard = negatives.sample_from_pool(hard_rng, pool, num_negatives, random)
        mixed = negatives.mix_negatives(hard, random, 1.0 - self.random_fraction) if num_negatives else random
        return negatives.gold_slots_then(golds, mixed)

    def loss(self, params: Params, batch: Mapping[str, Any], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        dropout_rng, candidate_rng = jax.random.split(rng)
        rows, gold, valid = self.candidates(batch, candidate_rng)
        t = batch["tables"]
        scores = self.model.apply({"params": params}, batch["passage_input_ids"], batch["passage_attention_mask"],
                                  t["entity_input_ids"][rows], t["entity_attention_mask"][rows],
                                  deterministic=False, rngs={"dropout": dropout_rng})
        best = jnp.argmax(jnp.where(valid, scores, -jnp.inf), axis=-1)
        hit = jnp.take_along_axis(gold, best[:, None], axis=-1)[:, 0]
        return self.loss_fn(scores, gold, valid), {"top1_is_gold": jnp.mean(hit)}

    def on_epoch_start(self, params: Params, epoch: int, rng: jax.Array) -> None:
        """The hard pools, mined with the current model (every epoch, the first included)."""
        if self.random_fraction < 1.0:
            _, top = self.retrieve(params, self.train_ids, self.train_mask, self.hard_pool_size, self.train_golds)
            self.pool = jnp.asarray(top, jnp.int32)

    def state_dict(self) -> dict[str, Any]:
        return {"hard_pool": self.pool}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pool = jnp.asarray(state["hard_pool"], jnp.int32)

    # ------------------------------------------------------------------------------------ encode / search

    def _encode_passages(self, params: Params, ids: jax.Array, mask: jax.Array) -> jax.Array:
        return self.model.apply({"params": params}, ids, mask, method=BiEncoder.encode_mentions)[0][:, 0]

    def _encode_entities(self, params: Params, ids: jax.Array, mask: jax.Array) -> jax.Array:
        return self.model.apply({"params": params}, ids, mask, method=BiEncoder.encode_entities)[0][:, 0]

    def encode_kb(self, params: Params) -> tuple[np.ndarray, corpus_encoding.CorpusLayout]:
        """This host's rows of the encoded KB and the table's layout over the mesh."""
        return corpus_encoding.encode_corpus(self._encode_entities, params, self.entity_ids, self.entity_mask,
                                             mesh=partitioning.current_mesh(), batch_size=self.encode_batch_size,
                                             desc="encode entities")

    def encode_passages(self, params: Params, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return corpus_encoding.encode_everywhere(self._encode_passages, params, ids, mask,
                                                 mesh=partitioning.current_mesh(),
                                                 batch_size=self.encode_batch_size, desc="encode passages")

    def retrieve(self, params: Params, ids: np.ndarray, mask: np.ndarray, k: int, exclude: np.ndarray | None = None,
                 kb: tuple[np.ndarray, corpus_encoding.CorpusLayout] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k KB rows ([Q, k] scores and rows) for passages, `exclude` rows ([Q, G], -1 padded) left out, exact
        or with ScaNN (`search`); `kb` reuses an `encode_kb` result."""
        local, layout = self.encode_kb(params) if kb is None else kb
        return corpus_encoding.search_corpus(self.search_kind, self.encode_passages(params, ids, mask), local,
                                             layout, partitioning.current_mesh(), k, exclude=exclude,
                                             query_batch=self.encode_batch_size, chunk_size=self.chunk_size)

    def write_candidates(self, params: Params, split: str, path: str) -> None:
        """The reader's input: each passage of `split` with its top `candidates_k` KB titles, best first
        (`kipjax.data.candidates` layout, one line per passage, `mention_id` = `passage_id`)."""
        examples = self.documents.passages(split)
        ids, mask = self.passage_arrays(examples)
        _, top = self.retrieve(params, ids, mask, self.candidates_k)
        candidate_files.write_candidates(path, [passage_id(e.passage) for e in examples], top, self.kb.titles)

    def export_index(self, params: Params, split: str, out_dir: str, k: int = 10) -> dict[str, Any]:
        """The KB's embeddings and a ScaNN index over them, with ScaNN's top-k against exact search for the
        passages of `split` (`kipjax.retrieval.index.export_scann_index`); one host."""
        if jax.process_count() > 1:
            raise ValueError("EntqaRetriever.export_index writes one host's table; run it on one host "
                             "(multi-host runs search with `search='scann'` per host instead)")
        local, layout = self.encode_kb(params)
        ids, mask = self.passage_arrays(self.documents.passages(split))
        queries = self.encode_passages(params, ids, mask)
        records = [{"wikipedia_title": t} for t in self.kb.titles]
        return index.export_scann_index(out_dir, np.asarray(local[:layout.num_rows], np.float32),
                                        np.asarray(queries, np.float32), records, {"split": split}, k=k,
                                        chunk_size=self.chunk_size)

    def evaluate(self, params: Params) -> Metrics:
        """recall@k over the evaluation passages' (passage, gold entity) pairs."""
        labelled = [e for e in self.eval if e.gold_entities]
        ids, mask = self.passage_arrays(labelled)
        _, top = self.retrieve(params, ids, mask, self.eval_ks[-1])
        metrics = {}
        for k in self.eval_ks:
            metrics[f"recall@{k}"] = gold_recall(labelled, (row[:k] for row in top))
        return metrics
