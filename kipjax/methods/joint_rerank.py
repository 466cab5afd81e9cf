"""JOINT reranker for zero-shot entity linking (dissertation section 3.5): a cross-encoder over the candidates
of a fixed retriever.

s(x, y) = w^T E_1(x, y) + b, where E is a BERT-family encoder over

    [CLS] mention-window [SEP] entity-title [ENT] entity-description [SEP]

(token type 0 for the mention side, 1 for the entity side; each side at most half of `max_len`) and E_1 the
first token's state, after dropout. Training minimises the NCE loss (3.11) over the gold and the top K-1
non-gold candidates that the retriever wrote to `candidates_train.json`; evaluation reranks the retriever's
top candidates of every mention and reports normalized accuracy (over mentions whose gold the retriever
found) and unnormalized accuracy (over all mentions), each macro-averaged over worlds.

Pairs are packed on device: a batch carries mention tokens and candidate rows, the jitted step gathers the
entity tokens from the resident table and concatenates the two sides without padding in between.
"""
from __future__ import annotations

from typing import Any, Mapping

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from kipjax.data import candidates as candidate_files
from kipjax.data.featurize import ZeshelSplit, load_zeshel_split
from kipjax.data.padding import fixed_size_batches
from kipjax.methods.base import Method, Metrics, Params
from kipjax.methods.encoder_setup import setup_encoder, with_pretrained_encoders
from kipjax.metrics import el as el_metrics
from kipjax.models import layers
from kipjax.models.dropout import Dropout
from kipjax.models.bert import BertConfig, BertEncoder
from kipjax.retrieval import nce

MASKED_SCORE = -1e9  # finite, so a masked column gives zero probability and zero gradient, never NaN
RERANK_INPUTS = ("mention_input_ids", "mention_attention_mask", "candidates", "candidate_mask")


def pack_pairs(mention_ids: jax.Array, mention_mask: jax.Array, entity_ids: jax.Array,
               entity_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Concatenates each mention [B, Lm] with each of its candidates [B, C, Le] into [B, C, Lm + Le - 1].

    Both sides start with [CLS]; the entity's is dropped, so a pair reads [CLS] m ... [SEP] e ... [SEP] followed
    by padding. Returns (input_ids, attention_mask, token_type_ids); pad positions have id 0 and mask 0.
    """
    le = entity_ids.shape[2]
    total = mention_ids.shape[1] + le - 1
    mention_len = mention_mask.sum(-1)[:, None, None]  # [B, 1, 1]
    entity_len = entity_mask.sum(-1)[..., None]  # [B, C, 1], the entity's [CLS] included
    position = jnp.arange(total)[None, None, :]
    from_mention = position < mention_len
    entity_pos = position - mention_len + 1  # skips the entity's [CLS] at index 0
    from_entity = ~from_mention & (entity_pos < entity_len)
    mention_tok = mention_ids[:, None, jnp.clip(jnp.arange(total), 0, mention_ids.shape[1] - 1)]  # [B, 1, T]
    entity_tok = jnp.take_along_axis(entity_ids, jnp.clip(entity_pos, 0, le - 1), axis=2)
    input_ids = jnp.where(from_mention, mention_tok, jnp.where(from_entity, entity_tok, 0))
    attention_mask = (from_mention | from_entity).astype(jnp.int32)
    token_type_ids = from_entity.astype(jnp.int32)
    return input_ids, attention_mask, token_type_ids


def init_cross_encoder(model: nn.Module, rng: jax.Array, first_ids: jax.Array, first_mask: jax.Array,
                       tables: Mapping[str, jax.Array], pretrained: Params | None) -> Params:
    """Parameters of a cross-encoder whose submodule `encoder` reads `pack_pairs` of a first segment and an
    entity row of `tables`, the encoder's taken from `pretrained` when given."""
    ids, mask, types = pack_pairs(first_ids[:1], first_mask[:1], tables["entity_input_ids"][:1][None],
                                  tables["entity_attention_mask"][:1][None])
    params = model.init(rng, ids[0], mask[0], types[0])["params"]
    if pretrained is not None:
        params = with_pretrained_encoders(params, pretrained, model.config.vocab_size, ("encoder",))
    return params


class CrossEncoder(nn.Module):
    """BERT over a packed (mention, entity) pair -> one score from the first token: w^T dropout(E_1) + b."""

    config: BertConfig
    head_dropout: float = 0.1

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array,
                 deterministic: bool = True) -> jax.Array:
        cfg = self.config
        states = BertEncoder(cfg, name="encoder")(input_ids, attention_mask, token_type_ids,
                                                  deterministic=deterministic).last_hidden_state
        first = Dropout(self.head_dropout)(states[:, 0], deterministic=deterministic)
        head = layers.Dense(1, ("embed", None), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                            kernel_init=nn.initializers.normal(cfg.initializer_range), name="score_head")
        return head(first)[:, 0].astype(jnp.float32)


@gin.configurable
class JointReranker(Method):
    """Trains and evaluates a JOINT reranker on Zeshel-format data and a retriever's candidate files.

    Args:
      data_dir: a Zeshel-layout root (documents/, mentions/).
      candidates_dir: holds `candidates_{split}.json` for the train and eval splits (`python -m kipjax.index
        --candidates=DIR` with a trained retriever).
      tokenizer_dir / pretrained / encoder_config / compute_dtype / remat / scan_layers: as for
        `HardNCERetrieval`.
      num_candidates: K in training, the gold plus the retriever's top K-1 non-gold candidates (64 in the
        chapter: top-63 negatives).
      eval_num_candidates: how many of the retriever's candidates are reranked at evaluation (64).
      max_len: the pair length; the mention window and the entity each get `max_len // 2` wordpieces.
      head_dropout: dropout on the first token's state before the linear score.
      eval_batch_size: mentions per evaluation batch (each with `eval_num_candidates` pairs).
    """

    def __init__(
        self,
        data_dir: str = gin.REQUIRED,
        candidates_dir: str = gin.REQUIRED,
        tokenizer_dir: str | None = None,
        pretrained: str | None = None,
        encoder_config: BertConfig | None = None,
        num_candidates: int = 64,
        eval_num_candidates: int = 64,
        max_len: int = 256,
        head_dropout: float = 0.1,
        train_split: str = "train",
        eval_split: str = "val",
        eval_batch_size: int = 8,
        compute_dtype: str = "float32",
        remat: bool = False,
        scan_layers: bool = False,
    ):
        if num_candidates < 2:
            raise ValueError(f"JointReranker.num_candidates must be at least 2 (gold + a negative), "
                             f"got {num_candidates}")
        setup = setup_encoder("JointReranker", data_dir, tokenizer_dir, pretrained, encoder_config,
                              compute_dtype, remat, scan_layers)
        self.tokenizer, self.pretrained_params = setup.tokenizer, setup.pretrained_params
        self.model = CrossEncoder(setup.config, head_dropout=head_dropout)
        self.num_candidates = num_candidates
        self.eval_batch_size = eval_batch_size
        side_len = max_len // 2

        self.train = load_zeshel_split(data_dir, train_split, self.tokenizer, side_len)
        self.candidates_dir, self.train_split = candidates_dir, train_split

        evaluation = load_zeshel_split(data_dir, eval_split, self.tokenizer, side_len)
        self.eval_mentions, self.eval_entities, self.eval_worlds = (evaluation.mentions, evaluation.entities,
                                                                    evaluation.world_names)
        self.eval_candidates, self.eval_candidate_mask = _read_candidates(candidates_dir, eval_split, evaluation,
                                                                          eval_num_candidates)
        self._entity_table = {"entity_input_ids": jnp.asarray(self.train.entities["input_ids"]),
                              "entity_attention_mask": jnp.asarray(self.train.entities["attention_mask"])}
        self._jit_scores = jax.jit(self._scores)

    # ------------------------------------------------------------------------------------- method contract

    def train_examples(self) -> dict[str, np.ndarray]:
        return rerank_training_examples(self.train, self.candidates_dir, self.train_split, self.num_candidates)

    def batch_from_features(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows of `train_examples()` or of the Zeshel rerank SeqIO tasks (the same featurization) -> the loss
        inputs; the row ids they carry are not needed."""
        batch = {k: features[k] for k in RERANK_INPUTS}
        batch["candidate_mask"] = batch["candidate_mask"].astype(bool)
        return batch

    def tables(self) -> dict[str, jax.Array]:
        return self._entity_table

    def init(self, rng: jax.Array, batch: Mapping[str, Any]) -> Params:
        return init_cross_encoder(self.model, rng, batch["mention_input_ids"], batch["mention_attention_mask"],
                                  batch["tables"], self.pretrained_params)

    def _scores(self, params: Params, mention_ids: jax.Array, mention_mask: jax.Array, cand_ids: jax.Array,
                cand_mask: jax.Array, valid: jax.Array, deterministic: bool = True,
                rng: jax.Array | None = None) -> jax.Array:
        """Scores [B, C] of each mention's candidates; invalid (missing) candidates get MASKED_SCORE."""
        ids, mask, types = pack_pairs(mention_ids, mention_mask, cand_ids, cand_mask)
        b, c, length = ids.shape
        flat = lambda x: x.reshape(b * c, length)
        scores = self.model.apply({"params": params}, flat(ids), flat(mask), flat(types),
                                  deterministic=deterministic,
                                  rngs=None if deterministic else {"dropout": rng}).reshape(b, c)
        return jnp.where(valid, scores, MASKED_SCORE)

    def loss(self, params: Params, batch: Mapping[str, Any], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        t, cands = batch["tables"], batch["candidates"]
        scores = self._scores(params, batch["mention_input_ids"], batch["mention_attention_mask"],
                              t["entity_input_ids"][cands], t["entity_attention_mask"][cands],
                              batch["candidate_mask"], deterministic=False, rng=rng)
        return nce.nce_loss(scores), {"candidate_accuracy": jnp.mean(jnp.argmax(scores, -1) == 0)}

    # ------------------------------------------------------------------------------------------- evaluate

    def rerank(self, params: Params) -> np.ndarray:
        """The reranker's top entity row for every evaluation mention (its best valid candidate)."""
        m, e = self.eval_mentions, self.eval_entities
        entity_ids, entity_mask = jnp.asarray(e["input_ids"]), jnp.asarray(e["attention_mask"])
        best = []
        for ids, mask, cands, valid in fixed_size_batches(self.eval_batch_size, m["input_ids"],
                                                          m["attention_mask"], self.eval_candidates,
                                                          self.eval_candidate_mask, desc="rerank"):
            scores = self._jit_scores(params, ids, mask, entity_ids[cands], entity_mask[cands], valid)
            best.append(np.take_along_axis(cands, np.asarray(jnp.argmax(scores, -1))[:, None], 1)[:, 0])
        return np.concatenate(best)[:len(m["input_ids"])]

    def evaluate(self, params: Params) -> Metrics:
        """Normalized / unnormalized accuracy (macro over worlds) and the retriever's candidate recall."""
        gold = self.eval_mentions["gold_entity"]
        found = ((self.eval_candidates == gold[:, None]) & self.eval_candidate_mask).any(1)
        predictions = np.where(self.eval_candidate_mask.any(1), self.rerank(params), -1)
        accuracy = el_metrics.zeshel_accuracy(predictions, gold, self.eval_mentions["world"], found)
        return {"normalized_accuracy": accuracy["normalized_accuracy"],
                "unnormalized_accuracy": accuracy["unnormalized_accuracy"],
                f"candidate_recall@{self.eval_candidates.shape[1]}": float(found.mean())}


def _read_candidates(candidates_dir: str, split_name: str, split: ZeshelSplit, k: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The retriever's top-k rows (and validity mask) for the mentions of a loaded split."""
    return candidate_files.read_candidates(candidate_files.candidates_path(candidates_dir, split_name),
                                           split.mention_ids, {d: i for i, d in enumerate(split.entity_ids)}, k)


def rerank_training_examples(split: ZeshelSplit, candidates_dir: str, split_name: str,
                             num_candidates: int) -> dict[str, np.ndarray]:
    """The training rows of a loaded split: each mention's tokens and its `training_candidates` from the
    retriever's candidates file (the featurization of both the method and the rerank SeqIO tasks)."""
    retrieved, found = _read_candidates(candidates_dir, split_name, split, num_candidates)
    candidates, mask = training_candidates(retrieved, found, split.mentions["gold_entity"], num_candidates)
    return {"mention_input_ids": split.mentions["input_ids"],
            "mention_attention_mask": split.mentions["attention_mask"], "candidates": candidates,
            "candidate_mask": mask}


def training_candidates(retrieved: np.ndarray, valid: np.ndarray, gold: np.ndarray,
                        num_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """Gold in column 0, then the retriever's best K-1 non-gold candidates in rank order.

    Returns int32 rows [M, K] and their validity mask (False where the retriever listed fewer than K-1
    non-gold entities; those columns are masked out of the loss).
    """
    m = len(gold)
    rows = np.zeros((m, num_candidates), np.int32)
    mask = np.zeros((m, num_candidates), bool)
    rows[:, 0], mask[:, 0] = gold, True
    negatives = valid & (retrieved != gold[:, None])
    # Stable sort of "is a negative" first keeps the retriever's order among negatives.
    order = np.argsort(~negatives, axis=1, kind="stable")[:, :num_candidates - 1]
    take = order.shape[1]  # fewer than K-1 when the retriever listed fewer candidates
    rows[:, 1:1 + take] = np.take_along_axis(retrieved, order, 1)
    mask[:, 1:1 + take] = np.take_along_axis(negatives, order, 1)
    rows[:, 1:] = np.where(mask[:, 1:], rows[:, 1:], gold[:, None])  # padding points at a real row
    return rows, mask
