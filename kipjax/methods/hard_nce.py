"""Hard-negative NCE retrieval for zero-shot entity linking (dissertation chapter 3).

A mention encoder E and an entity encoder F (BERT-family) feed one of the score functions of eq. 3.10
(dual / poly / multi / som / genpoly). Training minimises the NCE loss (3.11) over the gold entity and K-1
negatives that are random (uniform over the training KB minus the gold, fresh every step), hard (sampled from
the model's own distribution without replacement, eq. 3.9, re-mined at the start of every epoch from the whole
entity table, on device), or mixed-p (the leading round(p(K-1)) hard, the rest random).

Large tables live on the device: the entity token table and the mined negatives are `tables()`; a batch
carries mention tokens, the gold id and its row index, and the jitted step gathers candidate tokens.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from kipjax.data import candidates
from kipjax.data.featurize import load_zeshel_split
from kipjax.data.padding import fixed_size_batches
from kipjax.methods.base import Method, Metrics, Params
from kipjax.metrics import el as el_metrics
from kipjax.metrics import retrieval as retrieval_metrics
from kipjax.methods.encoder_setup import setup_encoder, with_pretrained_encoders
from kipjax.models.bert import BertConfig, BertEncoder
from kipjax.retrieval import index, negatives, nce, score

NEGATIVE_KINDS = ("random", "hard", "mixed")


class BiEncoder(nn.Module):
    """Mention encoder E, entity encoder F (optionally one shared network) and the score head."""

    config: BertConfig
    score_kind: str = "dual"
    num_vectors: int = 1
    share_encoders: bool = False

    def setup(self) -> None:
        self.mention_encoder = BertEncoder(self.config)
        self.entity_encoder = self.mention_encoder if self.share_encoders else BertEncoder(self.config)
        self.head = score.ScoreHead(kind=self.score_kind, num_vectors=self.num_vectors,
                                    dtype=self.config.dtype)

    def encode_mentions(self, input_ids: jax.Array, attention_mask: jax.Array,
                        deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
        states = self.mention_encoder(input_ids, attention_mask, deterministic=deterministic).last_hidden_state
        return self.head.reduce_mention(states, attention_mask)

    def encode_entities(self, input_ids: jax.Array, attention_mask: jax.Array,
                        deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
        states = self.entity_encoder(input_ids, attention_mask, deterministic=deterministic).last_hidden_state
        return self.head.reduce_entity(states, attention_mask)

    def __call__(self, mention_ids: jax.Array, mention_mask: jax.Array, cand_ids: jax.Array,
                 cand_mask: jax.Array, deterministic: bool = True) -> jax.Array:
        """Scores of each mention [B, L] against its own candidates [B, C, L] -> [B, C]."""
        mention_vecs, mention_vmask = self.encode_mentions(mention_ids, mention_mask, deterministic)
        b, c, length = cand_ids.shape
        vecs, vmask = self.encode_entities(cand_ids.reshape(b * c, length), cand_mask.reshape(b * c, length),
                                           deterministic)
        return score.candidate_scores(self.score_kind, mention_vecs, mention_vmask,
                                      vecs.reshape(b, c, *vecs.shape[1:]), vmask.reshape(b, c, -1))


@gin.configurable
class HardNCERetrieval(Method):
    """Trains and evaluates a retriever on Zeshel-format data.

    Args:
      data_dir: a Zeshel-layout root (documents/, mentions/).
      tokenizer_dir: a Hugging Face tokenizer directory; defaults to `pretrained`, else `data_dir/tokenizer`.
      pretrained: a local Hugging Face BERT/RoBERTa/ELECTRA directory to initialise both encoders from.
      encoder_config: the encoder architecture when training from scratch (ignored with `pretrained`).
      score_kind / num_vectors: the score function (see `kipjax.retrieval.score`).
      num_candidates: K, the gold plus K-1 negatives per mention.
      negatives: 'random', 'hard' or 'mixed'; `hard_fraction` is p for 'mixed'.
      hard_sampling: 'sample' (without replacement from the model, eq. 3.9) or 'topk' (greedy).
      eval_split: the Zeshel split evaluated by `evaluate` ('val' or 'test').
      eval_ks: the k of the recall@k metrics; the largest also bounds the retrieved candidate lists.
      compute_dtype: 'float32' or 'bfloat16' activations (parameters stay float32).
      remat / scan_layers: recompute layer activations in the backward pass; scan over layers (use both
        together for large K, see `encoder_setup.setup_encoder`).
    """

    def __init__(
        self,
        data_dir: str = gin.REQUIRED,
        tokenizer_dir: str | None = None,
        pretrained: str | None = None,
        encoder_config: BertConfig | None = None,
        score_kind: str = "dual",
        num_vectors: int = 1,
        share_encoders: bool = False,
        num_candidates: int = 64,
        negatives: str = "hard",
        hard_fraction: float = 0.5,
        hard_sampling: str = "sample",
        max_len: int = 128,
        train_split: str = "train",
        eval_split: str = "val",
        eval_ks: Sequence[int] = (1, 8, 64),
        encode_batch_size: int = 256,
        chunk_size: int = 4096,
        compute_dtype: str = "float32",
        remat: bool = False,
        scan_layers: bool = False,
    ):
        if negatives not in NEGATIVE_KINDS:
            raise ValueError(f"HardNCERetrieval.negatives: expected one of {NEGATIVE_KINDS}, got {negatives!r}")
        if hard_sampling not in ("sample", "topk"):
            raise ValueError(f"HardNCERetrieval.hard_sampling: expected 'sample' or 'topk', got {hard_sampling!r}")
        self.data_dir = data_dir
        self.max_len = max_len
        self.num_candidates = num_candidates
        self.hard_fraction = {"random": 0.0, "hard": 1.0, "mixed": hard_fraction}[negatives]
        self.hard_sampling = hard_sampling
        self.eval_ks = tuple(sorted(eval_ks))
        self.encode_batch_size = encode_batch_size
        self.chunk_size = chunk_size

        setup = setup_encoder("HardNCERetrieval", data_dir, tokenizer_dir, pretrained, encoder_config,
                              compute_dtype, remat, scan_layers)
        self.tokenizer, self.pretrained_params = setup.tokenizer, setup.pretrained_params
        config = setup.config
        self.model = BiEncoder(config, score_kind=score_kind, num_vectors=num_vectors,
                               share_encoders=share_encoders)

        self.train_mentions, self.train_entities, *_ = load_zeshel_split(data_dir, train_split, self.tokenizer,
                                                                         max_len)
        self.eval_mentions, self.eval_entities, self.eval_worlds, *_ = load_zeshel_split(
            data_dir, eval_split, self.tokenizer, max_len)
        self.num_train_entities = len(self.train_entities["input_ids"])
        if self.num_train_entities < num_candidates:
            raise ValueError(f"HardNCERetrieval.num_candidates={num_candidates} exceeds the "
                             f"{self.num_train_entities} training entities")
        self.hard_negatives = jnp.zeros((len(self.train_mentions["input_ids"]), num_candidates - 1), jnp.int32)
        self._entity_table = {"entity_input_ids": jnp.asarray(self.train_entities["input_ids"]),
                              "entity_attention_mask": jnp.asarray(self.train_entities["attention_mask"])}
        self._jit_encode_mentions = jax.jit(self._encode_mentions)
        self._jit_encode_entities = jax.jit(self._encode_entities)
        self._jit_mine = jax.jit(self._mine)
        self._jit_retrieve = jax.jit(self._retrieve, static_argnums=(6,))

    # ------------------------------------------------------------------------------------- method contract

    def train_examples(self) -> dict[str, np.ndarray]:
        m = self.train_mentions
        return {"mention_input_ids": m["input_ids"], "mention_attention_mask": m["attention_mask"],
                "gold_entity": m["gold_entity"]}

    def batch_from_features(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Batches of `train_examples()` pass through; those of the Zeshel SeqIO tasks carry the mention's row as
        `mention_index`, which indexes the mined negatives as `example_index` does."""
        batch = {k: features[k] for k in ("mention_input_ids", "mention_attention_mask", "gold_entity")}
        batch["example_index"] = features["example_index" if "example_index" in features else "mention_index"]
        return batch

    def tables(self) -> dict[str, jax.Array]:
        return {**self._entity_table, "hard_negatives": self.hard_negatives}

    def init(self, rng: jax.Array, batch: Mapping[str, Any]) -> Params:
        t = batch["tables"]
        cand = t["entity_input_ids"][:1][None]
        params = self.model.init(rng, batch["mention_input_ids"][:1], batch["mention_attention_mask"][:1],
                                 cand, jnp.ones_like(cand))["params"]
        if self.pretrained_params is not None:
            params = with_pretrained_encoders(params, self.pretrained_params, self.model.config.vocab_size,
                                              ("mention_encoder", "entity_encoder"))
        return params

    def sample_negatives(self, batch: Mapping[str, Any], rng: jax.Array) -> jax.Array:
        """The K-1 negatives of each example: mined hard ones and/or fresh uniform ones, mixed by p."""
        gold = batch["gold_entity"]
        num = self.num_candidates - 1
        if self.hard_fraction == 0.0:
            return negatives.sample_random_negatives(rng, gold, self.num_train_entities, num)
        hard = batch["tables"]["hard_negatives"][batch["example_index"]]
        if self.hard_fraction == 1.0:
            return hard
        random = negatives.sample_random_negatives(rng, gold, self.num_train_entities, num)
        return negatives.mix_negatives(hard, random, self.hard_fraction)

    def loss(self, params: Params, batch: Mapping[str, Any], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        dropout_rng, negative_rng = jax.random.split(rng)
        t = batch["tables"]
        cands = jnp.concatenate([batch["gold_entity"][:, None], self.sample_negatives(batch, negative_rng)], 1)
        scores = self.model.apply({"params": params}, batch["mention_input_ids"], batch["mention_attention_mask"],
                                  t["entity_input_ids"][cands], t["entity_attention_mask"][cands],
                                  deterministic=False, rngs={"dropout": dropout_rng})
        return nce.nce_loss(scores), {"candidate_accuracy": jnp.mean(jnp.argmax(scores, -1) == 0)}

    def on_epoch_start(self, params: Params, epoch: int, rng: jax.Array) -> None:
        if self.hard_fraction > 0.0:
            self.hard_negatives = self.mine_hard_negatives(params, rng)

    def state_dict(self) -> dict[str, Any]:
        return {"hard_negatives": self.hard_negatives}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.hard_negatives = jnp.asarray(state["hard_negatives"], jnp.int32)

    # -------------------------------------------------------------------------------------- encode / mine

    def _encode_mentions(self, params: Params, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.model.apply({"params": params}, ids, mask, method=BiEncoder.encode_mentions)

    def _encode_entities(self, params: Params, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.model.apply({"params": params}, ids, mask, method=BiEncoder.encode_entities)

    def encode_table(self, params: Params, arrays: Mapping[str, np.ndarray], entities: bool
                     ) -> tuple[jax.Array, jax.Array]:
        """Encodes a token table in fixed-size batches (one compilation) -> (vectors [N, m, H], mask [N, m])."""
        fn = self._jit_encode_entities if entities else self._jit_encode_mentions
        # Blocking on each batch keeps the progress line honest (dispatch alone would finish at once).
        outs = [jax.block_until_ready(fn(params, ids, mask)) for ids, mask in
                fixed_size_batches(self.encode_batch_size, arrays["input_ids"], arrays["attention_mask"],
                                   desc=f"encode {'entities' if entities else 'mentions'}")]
        n = len(arrays["input_ids"])
        return tuple(jnp.concatenate(parts)[:n] for parts in zip(*outs))

    def _score_fn(self, queries: tuple, table: tuple) -> jax.Array:
        return score.pairwise_scores(self.model.score_kind, queries[0], queries[1], table[0], table[1])

    def _mine(self, params: Params, ids: jax.Array, mask: jax.Array, gold: jax.Array, entity_vecs: jax.Array,
              entity_mask: jax.Array, rng: jax.Array) -> jax.Array:
        """K-1 hard negatives per mention from the whole table: gold excluded, sampled or greedy."""
        vecs, vmask = self._encode_mentions(params, ids, mask)
        noise = index.gumbel_bias(rng, ids.shape[0]) if self.hard_sampling == "sample" else None

        def bias(queries: tuple, chunk: tuple, entity_ids: jax.Array) -> jax.Array:
            excluded = jnp.where(entity_ids[None, :] == queries[2][:, None], -jnp.inf, 0.0)
            return excluded if noise is None else excluded + noise(queries, chunk, entity_ids)

        _, top = index.chunked_topk(self._score_fn, (vecs, vmask, gold), (entity_vecs, entity_mask),
                                    self.num_candidates - 1, chunk_size=self.chunk_size, bias_fn=bias)
        return top

    def mine_hard_negatives(self, params: Params, rng: jax.Array) -> jax.Array:
        """Encodes the training entity table with the current model and samples negatives for every mention."""
        entity_vecs, entity_mask = self.encode_table(params, self.train_entities, entities=True)
        m = self.train_mentions
        parts = []
        for i, (ids, mask, gold) in enumerate(fixed_size_batches(self.encode_batch_size, m["input_ids"],
                                                              m["attention_mask"], m["gold_entity"],
                                                              desc="mine hard negatives")):
            parts.append(jax.block_until_ready(self._jit_mine(params, ids, mask, gold, entity_vecs, entity_mask,
                                                              jax.random.fold_in(rng, i))))
        return jnp.concatenate(parts)[:len(m["input_ids"])]

    # ------------------------------------------------------------------------------------------- evaluate

    def _retrieve(self, params: Params, ids: jax.Array, mask: jax.Array, world: jax.Array, entity_vecs: jax.Array,
                  entity_mask: jax.Array, k: int, entity_world: jax.Array) -> jax.Array:
        """Top-k entity ids of each mention among the entities of its own world."""
        vecs, vmask = self._encode_mentions(params, ids, mask)

        def same_world(queries: tuple, chunk: tuple, entity_ids: jax.Array) -> jax.Array:
            return jnp.where(chunk[2][None, :] == queries[2][:, None], 0.0, -jnp.inf)

        _, top = index.chunked_topk(self._score_fn, (vecs, vmask, world), (entity_vecs, entity_mask, entity_world),
                                    k, chunk_size=self.chunk_size, bias_fn=same_world)
        return top

    def retrieve(self, params: Params, mentions: Mapping[str, np.ndarray], entities: Mapping[str, np.ndarray],
                 k: int) -> np.ndarray:
        """Ranked entity rows [M, k] for every mention (-1 where a world has fewer than k entities)."""
        entity_vecs, entity_mask = self.encode_table(params, entities, entities=True)
        entity_world = jnp.asarray(entities["entity_world"])
        parts = [jax.block_until_ready(self._jit_retrieve(params, ids, mask, world, entity_vecs, entity_mask, k,
                                                          entity_world))
                 for ids, mask, world in fixed_size_batches(self.encode_batch_size, mentions["input_ids"],
                                                         mentions["attention_mask"], mentions["world"],
                                                         desc="retrieve")]
        return np.asarray(jnp.concatenate(parts))[:len(mentions["input_ids"])]

    def evaluate(self, params: Params) -> Metrics:
        """Micro recall@k, MRR@k_max, and the top-1 (unnormalized) accuracy macro-averaged over worlds."""
        k_max = self.eval_ks[-1]
        ranked = self.retrieve(params, self.eval_mentions, self.eval_entities, k_max)
        gold = self.eval_mentions["gold_entity"]
        rows, golds = ranked.tolist(), gold.tolist()
        metrics = {f"recall@{k}": retrieval_metrics.recall_at_k(rows, golds, k) for k in self.eval_ks}
        metrics[f"mrr@{k_max}"] = retrieval_metrics.mrr(rows, golds, k_max)
        accuracy = el_metrics.zeshel_accuracy(ranked[:, 0], gold, self.eval_mentions["world"])
        metrics["unnormalized_accuracy"] = accuracy["unnormalized_accuracy"]
        return metrics

    def _split_records(self, split: str) -> tuple[dict, dict, list[str], list[str]]:
        """Featurized mentions and entities of `split`, the mention ids, and the entity document ids by row."""
        s = load_zeshel_split(self.data_dir, split, self.tokenizer, self.max_len)
        return s.mentions, s.entities, s.mention_ids, s.entity_ids

    def write_candidates(self, params: Params, split: str, path: str, k: int = 64) -> None:
        """Writes `candidates_{split}.json` lines `{mention_id, candidates}` (document ids, best first, from the
        mention's world) for the JOINT reranker, atomically."""
        mentions, entities, mention_ids, entity_ids = self._split_records(split)
        candidates.write_candidates(path, mention_ids, self.retrieve(params, mentions, entities, k), entity_ids)

    def export_index(self, params: Params, split: str, out_dir: str, k: int = 10) -> dict[str, Any]:
        """Encodes `split`'s entities, saves embeddings + a ScaNN index, and compares ScaNN's top-k with exact
        search over the same vectors for the split's mentions (one index over all the split's worlds)."""
        if self.model.score_kind != "dual":
            raise ValueError(f"an ANN index needs single-vector entities (score_kind='dual'), not "
                             f"{self.model.score_kind!r}; multi-vector scores use exact chunked search")
        mentions, entities, _, entity_ids = self._split_records(split)
        entity_vecs = np.asarray(self.encode_table(params, entities, entities=True)[0][:, 0], np.float32)
        queries = np.asarray(self.encode_table(params, mentions, entities=False)[0][:, 0], np.float32)
        worlds = np.asarray(entities["entity_world"]).tolist()
        return index.export_scann_index(out_dir, entity_vecs, queries,
                                        [{"document_id": d, "world": w} for d, w in zip(entity_ids, worlds)],
                                        {"split": split}, k=k, chunk_size=self.chunk_size)

