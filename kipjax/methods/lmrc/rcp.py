"""LMRC stage 1, relation candidate proposal: ATLOP's pair classifier with two classes, "related" or not.

For a document encoded by a BERT-family encoder (`*` around every mention, rcp_features.py):
  - entity embedding e = logsumexp over its mentions' opening-marker states;
  - localized context pooling: with A_e [heads, L] the last layer's attention of e's mentions (mean over
    mentions), the pair's context weights are q = mean over heads of A_h * A_t, normalised to sum 1, and the
    context vector c = q H over the token states H;
  - z_h = tanh(W_h [e_h; c]), z_t = tanh(W_t [e_t; c]); a grouped bilinear layer (blocks of `block_size`)
    gives two logits (ATLOP's threshold class and "related"); s = logit_related - logit_threshold.
Training minimises binary cross-entropy of s, or ATLOP's adaptive-thresholding loss, which with these two
classes is the same function (tested); the option exists for multi-class use. A pair is proposed when
sigmoid(s) > `threshold` (0.5 is ATLOP's decision rule).

Documents longer than the encoder's window are encoded in overlapping chunks and merged as ATLOP does for
its two 512-token halves, generalised to any number of chunks: a token's state is the mean of its states in
the chunks that hold it, and its attention row is the sum of the chunks' rows (each scattered to document
positions, [CLS] / [SEP] / padding columns dropped), renormalised to sum 1 over the document's pieces.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from kipjax.data.docred import DocredDocument, read_docred, write_candidate_pairs
from kipjax.data.padding import fixed_size_batches
from kipjax.methods.base import Method, Metrics, Params
from kipjax.methods.encoder_setup import setup_encoder, with_pretrained_encoders
from kipjax.methods.lmrc import rcp_features
from kipjax.models import layers
from kipjax.models.bert import BertConfig, BertEncoder

Array = jax.Array
NEG = -1e30


def chunk_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts of windows of `window` positions covering 0..length-1, `stride` apart, the last ending at length."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def encode_long(encode: Any, input_ids: Array, attention_mask: Array, cls_id: int, sep_id: int,
                window: int, stride: int) -> tuple[Array, Array]:
    """Token states [B, L, D] and last-layer attention [B, H, L, L] of documents of L pieces (no special
    tokens) through an encoder taking at most `window` + 2 positions ([CLS] piece... [SEP]).

    `encode(ids, mask) -> (states, attention)` runs the encoder on [N, window + 2] inputs.
    """
    b, length = input_ids.shape
    starts = chunk_starts(length, window, stride)
    span = min(window, length)
    chunks = jnp.stack([input_ids[:, s:s + span] for s in starts], 1).reshape(-1, span)  # [B*K, span]
    masks = jnp.stack([attention_mask[:, s:s + span] for s in starts], 1).reshape(-1, span)
    n = chunks.shape[0]
    ends = masks.sum(-1)  # [SEP] goes right after each chunk's last real piece
    body = jnp.concatenate([jnp.full((n, 1), cls_id, chunks.dtype), chunks, jnp.zeros((n, 1), chunks.dtype)], 1)
    body = body.at[jnp.arange(n), ends + 1].set(sep_id)
    body_mask = jnp.concatenate([jnp.ones((n, 1), masks.dtype), masks, jnp.zeros((n, 1), masks.dtype)], 1)
    body_mask = body_mask.at[jnp.arange(n), ends + 1].set(1)
    states, attention = encode(body, body_mask)
    k = len(starts)
    states = states[:, 1:span + 1].reshape(b, k, span, -1)  # drop [CLS] and the trailing slot
    attention = attention[:, :, 1:span + 1, 1:span + 1]
    attention = attention.reshape(b, k, *attention.shape[1:])  # [B, K, H, span, span]
    total_states = jnp.zeros((b, length, states.shape[-1]), states.dtype)
    total_attention = jnp.zeros((b, attention.shape[2], length, length), attention.dtype)
    counts = jnp.zeros((length,), states.dtype)
    for c, s in enumerate(starts):
        total_states = total_states.at[:, s:s + span].add(states[:, c])
        total_attention = total_attention.at[:, :, s:s + span, s:s + span].add(attention[:, c])
        counts = counts.at[s:s + span].add(1)
    states = total_states / counts[None, :, None]
    # [SEP] (and padding) sits on padded document positions: their columns are dropped like [CLS]'s.
    total_attention = total_attention * attention_mask[:, None, None, :].astype(total_attention.dtype)
    attention = total_attention / (total_attention.sum(-1, keepdims=True) + 1e-10)
    return states, attention


class PairHead(nn.Module):
    """Localized context pooling + grouped bilinear classifier over entity pairs (module docstring)."""

    hidden_size: int
    block_size: int = 64
    num_classes: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, states: Array, attention: Array, mention_positions: Array, heads: Array,
                 tails: Array) -> Array:
        """states [B, L, D], attention [B, H, L, L], mention_positions [B, E, M] (-1 none), heads / tails [B, P]
        -> logits [B, P, num_classes]."""
        if self.hidden_size % self.block_size:
            raise ValueError(f"hidden size {self.hidden_size} is not a multiple of block_size {self.block_size}")
        valid = mention_positions >= 0  # [B, E, M]
        positions = jnp.maximum(mention_positions, 0)
        gather = jax.vmap(lambda x, p: x[p])  # per document: x[positions]
        mention_states = gather(states, positions)  # [B, E, M, D]
        entity = jax.nn.logsumexp(jnp.where(valid[..., None], mention_states, NEG), axis=2)
        entity = jnp.where(valid.any(-1, keepdims=True), entity, 0.0)
        rows = jax.vmap(lambda a, p: a[:, p])(attention, positions)  # [B, H, E, M, L]
        weights = valid[:, None, :, :, None].astype(rows.dtype)
        entity_attention = (rows * weights).sum(3) / jnp.maximum(weights.sum(3), 1.0)  # [B, H, E, L]
        pick = jax.vmap(lambda x, i: x[i])
        h_att = pick(jnp.moveaxis(entity_attention, 1, 2), heads)  # [B, P, H, L]
        t_att = pick(jnp.moveaxis(entity_attention, 1, 2), tails)
        context_weights = (h_att * t_att).mean(2)
        context_weights = context_weights / (context_weights.sum(-1, keepdims=True) + 1e-5)
        context = jnp.einsum("bpl,bld->bpd", context_weights, states)
        dense = dict(dtype=self.dtype)
        z_h = jnp.tanh(layers.Dense(self.hidden_size, ("mlp", "embed"), name="head_extractor", **dense)(
            jnp.concatenate([pick(entity, heads), context], -1)))
        z_t = jnp.tanh(layers.Dense(self.hidden_size, ("mlp", "embed"), name="tail_extractor", **dense)(
            jnp.concatenate([pick(entity, tails), context], -1)))
        groups = self.hidden_size // self.block_size
        b1 = z_h.reshape(*z_h.shape[:-1], groups, self.block_size)
        b2 = z_t.reshape(*z_t.shape[:-1], groups, self.block_size)
        bilinear = jnp.einsum("bpgi,bpgj->bpgij", b1, b2).reshape(*z_h.shape[:-1], -1)
        return layers.Dense(self.num_classes, ("mlp", None), name="bilinear", **dense)(bilinear).astype(jnp.float32)


def adaptive_threshold_loss(logits: Array, labels: Array) -> Array:
    """ATLOP's loss per example: class 0 is the threshold; labels [..., C] multi-hot over classes 1.. (column 0
    ignored). Positives must beat the threshold, and the threshold must beat every negative class."""
    labels = labels.at[..., 0].set(0).astype(logits.dtype)
    threshold = jnp.zeros_like(labels).at[..., 0].set(1.0)
    positives = jnp.where((labels + threshold) > 0, logits, NEG)
    loss_positive = -(jax.nn.log_softmax(positives) * labels).sum(-1)
    negatives = jnp.where(labels > 0, NEG, logits)
    loss_negative = -(jax.nn.log_softmax(negatives) * threshold).sum(-1)
    return loss_positive + loss_negative


def related_score(logits: Array) -> Array:
    """s = logit(related) - logit(threshold): sigmoid(s) is the probability that the pair has a relation."""
    return logits[..., 1] - logits[..., 0]


class CandidateClassifier(nn.Module):
    """BERT-family encoder over a `*`-marked document + `PairHead`."""

    config: BertConfig
    block_size: int = 64
    window: int = 510
    stride: int = 256
    cls_id: int = 101
    sep_id: int = 102

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, mention_positions: Array, heads: Array,
                 tails: Array, deterministic: bool = True) -> Array:
        encoder = BertEncoder(self.config, name="encoder")

        def encode(ids: Array, mask: Array) -> tuple[Array, Array]:
            output = encoder(ids, mask, deterministic=deterministic, return_last_attention=True)
            return output.last_hidden_state, output.last_attention

        states, attention = encode_long(encode, input_ids, attention_mask, self.cls_id, self.sep_id,
                                        self.window, self.stride)
        return PairHead(self.config.hidden_size, self.block_size, dtype=self.config.dtype, name="pair_head")(
            states, attention, mention_positions, heads, tails)


def candidate_metrics(labels: np.ndarray, proposed: np.ndarray) -> dict[str, float]:
    """Candidate recall (related pairs kept), precision (kept pairs that are related) and the fraction of pairs
    kept, over flat arrays of real pairs."""
    kept, related = int(proposed.sum()), int(labels.sum())
    hits = int((proposed & (labels > 0)).sum())
    return {"candidate_recall": hits / related if related else 0.0,
            "candidate_precision": hits / kept if kept else 0.0,
            "fraction_kept": kept / len(labels) if len(labels) else 0.0}


@gin.configurable
class RelationCandidateProposal(Method):
    """Trains the stage-1 classifier on DocRED-format data and proposes candidate pairs for stage 2.

    Args:
      train_file / eval_file: DocRED-format JSON files (train_annotated.json, dev.json, Re-DocRED *_revised).
      tokenizer_dir / pretrained / encoder_config / compute_dtype / remat / scan_layers: the encoder, as for
        the other BERT-family methods (RoBERTa-large in the paper).
      max_length: pieces kept per document (ATLOP: 1024); window / stride: the encoder chunks (510 pieces
        plus [CLS] and [SEP]).
      max_entities / max_mentions: padded entity and mention counts (DocRED: 42 entities, 23 mentions at most).
      block_size: the grouped bilinear block (64). loss: 'bce' or 'atl' (equal for two classes).
      threshold: propose a pair when sigmoid(s) > threshold; lower keeps more candidates for stage 2.
      eval_batch_size: documents per evaluation batch.
      candidates_file: if set, evaluation writes the evaluation documents' proposed pairs there
        (`kipjax.data.docred.write_candidate_pairs`), the input of stage 2 (`RelationClassification`).
    """

    def __init__(
        self,
        train_file: str = gin.REQUIRED,
        eval_file: str = gin.REQUIRED,
        tokenizer_dir: str | None = None,
        pretrained: str | None = None,
        encoder_config: BertConfig | None = None,
        max_length: int = 1024,
        window: int = 510,
        stride: int = 256,
        max_entities: int = 42,
        max_mentions: int = 23,
        block_size: int = 64,
        loss: str = "bce",
        threshold: float = 0.5,
        eval_batch_size: int = 4,
        candidates_file: str | None = None,
        compute_dtype: str = "float32",
        remat: bool = False,
        scan_layers: bool = False,
    ):
        if loss not in ("bce", "atl"):
            raise ValueError(f"RelationCandidateProposal.loss must be 'bce' or 'atl', got {loss!r}")
        setup = setup_encoder("RelationCandidateProposal", os.path.dirname(train_file), tokenizer_dir, pretrained, encoder_config,
                              compute_dtype, remat, scan_layers)
        self.tokenizer, self.pretrained_params = setup.tokenizer, setup.pretrained_params
        if self.tokenizer.convert_tokens_to_ids(rcp_features.MARKER) == self.tokenizer.unk_token_id:
            raise ValueError(f"RelationCandidateProposal: the tokenizer has no {rcp_features.MARKER!r} token")
        self.model = CandidateClassifier(setup.config, block_size, window, stride, self.tokenizer.cls_token_id,
                                         self.tokenizer.sep_token_id)
        self.loss_kind, self.threshold, self.eval_batch_size = loss, threshold, eval_batch_size
        self.candidates_file = candidates_file
        self.shape = dict(max_length=max_length, max_entities=max_entities, max_mentions=max_mentions)
        self.train_documents = read_docred(train_file)
        self.eval_documents = read_docred(eval_file)
        self._eval = self.featurize(self.eval_documents)
        self._jit_scores = jax.jit(self.scores)

    def featurize(self, docs: Sequence[DocredDocument]) -> dict[str, np.ndarray]:
        return rcp_features.featurize_documents(docs, self.tokenizer, **self.shape)

    # ------------------------------------------------------------------------------------- method contract

    def train_examples(self) -> dict[str, np.ndarray]:
        return self.featurize(self.train_documents)

    def batch_from_features(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows of `train_examples()` or of the DocRED RCP SeqIO tasks (the same featurization; SeqIO's
        features are int32, so `pair_mask` becomes bool again)."""
        batch = {name: features[name] for name in rcp_features.FEATURES}
        batch["pair_mask"] = batch["pair_mask"].astype(bool)
        return batch

    def init(self, rng: jax.Array, batch: Mapping[str, Any]) -> Params:
        params = self.model.init(rng, batch["input_ids"][:1], batch["attention_mask"][:1],
                                 batch["mention_positions"][:1], batch["pair_heads"][:1],
                                 batch["pair_tails"][:1])["params"]
        if self.pretrained_params is not None:
            params = with_pretrained_encoders(params, self.pretrained_params, self.model.config.vocab_size,
                                              ("encoder",))
        return params

    def scores(self, params: Params, batch: Mapping[str, Any], deterministic: bool = True,
               rng: jax.Array | None = None) -> Array:
        """Logits [B, P, 2] of every pair slot of the batch's documents."""
        return self.model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                batch["mention_positions"], batch["pair_heads"], batch["pair_tails"],
                                deterministic=deterministic, rngs=None if deterministic else {"dropout": rng})

    def loss(self, params: Params, batch: Mapping[str, Any], rng: jax.Array) -> tuple[Array, Metrics]:
        logits = self.scores(params, batch, deterministic=False, rng=rng)
        labels = batch["pair_labels"]
        if self.loss_kind == "atl":
            per_pair = adaptive_threshold_loss(logits, jax.nn.one_hot(labels, 2))
        else:
            per_pair = optax.sigmoid_binary_cross_entropy(related_score(logits), labels.astype(jnp.float32))
        mask = batch["pair_mask"].astype(jnp.float32)
        count = jnp.maximum(mask.sum(), 1.0)
        correct = ((related_score(logits) > 0) == (labels > 0)).astype(jnp.float32)
        return (per_pair * mask).sum() / count, {"pair_accuracy": (correct * mask).sum() / count}

    # ------------------------------------------------------------------------------------------- evaluate

    def probabilities(self, params: Params, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """sigmoid(s) [N, P] for featurized documents."""
        names = sorted(features)
        out = []
        for arrays in fixed_size_batches(self.eval_batch_size, *(features[k] for k in names), desc="score pairs"):
            out.append(np.asarray(jax.nn.sigmoid(related_score(self._jit_scores(params, dict(zip(names, arrays)))))))
        return np.concatenate(out)[:len(features["input_ids"])]

    def _kept_pairs(self, features: Mapping[str, np.ndarray], proposed: np.ndarray) -> list[list[tuple[int, int]]]:
        """Per document, its real pair slots that `proposed` [N, P] keeps, as (head, tail) entity indices."""
        return [[(int(h), int(t)) for h, t, keep, real in zip(features["pair_heads"][i], features["pair_tails"][i],
                                                             proposed[i], features["pair_mask"][i]) if keep and real]
                for i in range(len(proposed))]

    def propose(self, params: Params, docs: Sequence[DocredDocument]) -> list[list[tuple[int, int]]]:
        """Per document, the ordered entity pairs whose probability of a relation exceeds the threshold."""
        features = self.featurize(docs)
        return self._kept_pairs(features, self.probabilities(params, features) > self.threshold)

    def evaluate(self, params: Params) -> Metrics:
        """Candidate recall / precision / fraction of pairs kept on the evaluation documents at the threshold;
        writes the proposed pairs to `candidates_file` if set."""
        mask = self._eval["pair_mask"]
        proposed = self.probabilities(params, self._eval) > self.threshold
        if self.candidates_file:
            write_candidate_pairs(self.candidates_file, self.eval_documents, self._kept_pairs(self._eval, proposed))
        return candidate_metrics(self._eval["pair_labels"][mask], proposed[mask])
