"""Seq2seq coreference resolution (chapter 7): a T5-family model maps a document to a linearized annotation.

Training (eq. 7.1): teacher-forced cross-entropy of the action sequence y given the document x and the decoder
input z = (<s>, linearization), over overlapping segments of each training document (featurize.py). The
representation is a gin choice: full or partial linearization, cluster identity after / before / integer-free,
token or copy actions (full linearization with copy actions is the chapter's best).

Evaluation: each evaluation document, cut into non-overlapping segments of up to `eval_max_length` pieces, is
decoded by constrained beam search (appendix E.1; one compiled loop per batch) and parsed back; predicted
mentions map to words and are scored against the gold word-level annotation with the CoNLL-2012 metrics, the
mention-detection error analysis of Table 7.7, and, for reference, the score of the trivial system that
returns every gold mention as a singleton. Identity 'before' has no constraint in the appendix and is decoded
unconstrained.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Mapping

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kipjax import decoding
from kipjax.data.coref import read_document_files, write_jsonlines
from kipjax.data.padding import fixed_size_batches, pad_rows, round_up
from kipjax.methods.base import Method, Metrics, Params
from kipjax.methods.coref import featurize as feat
from kipjax.methods.coref import linearize as lin
from kipjax.methods.coref.constraints import FullLinearizationConstraint, PartialLinearizationConstraint
from kipjax.methods.coref.vocabulary import (add_coref_tokens, init_new_token_rows, integer_token_ids,
                                             speaker_marker_ids)
from kipjax.methods.encoder_setup import COMPUTE_DTYPES
from kipjax.methods.model_source import check_model_source
from kipjax.metrics import coref as coref_metrics
from kipjax.models import hf
from kipjax.models.t5 import T5, T5Config, is_cross_attention_cache
from kipjax.partitioning import fill_boxed

LENGTH_MULTIPLE = 32  # padded lengths are rounded up to this, so similar corpora share compiled shapes


@gin.configurable
class Seq2seqCoref(Method):
    """Trains a T5-family model to write coreference annotations and evaluates it with the CoNLL metrics.

    Args:
      train_file / eval_file: a CoNLL-2012, jsonlines or PreCo file, or a glob of them (`read_document_files`).
      tokenizer_dir: the tokenizer (default: `pretrained`'s); the coreference symbols are added to it.
      pretrained: a local Hugging Face T5 / T0 / FLAN-T5 directory; else `model_config` trains from scratch.
      representation / identity / actions: the sequence representation (sec. 7.3).
      max_segment_length / segment_stride: training segments in pieces (2048 with stride 1024 in the chapter).
      eval_max_length: longest evaluation segment (4096).
      max_target_length: cap on training target length; None pads to the longest target.
      max_decode_length: decoder steps at evaluation; None allows 2 x the source length (the constraint ends
        every hypothesis within it).
      beam_size: 4 in the chapter. max_depth: deepest mention nesting decoded. max_clusters: most clusters
        per segment (the `</m_l>` symbols of integer-free runs; bounds the digits of a cluster number).
      eval_batch_size: segments decoded together. eval_max_documents: evaluate on the first N only (periodic
        evals of long runs), None for all. predictions_file: if set, evaluation writes its clusters there.
    """

    def __init__(
        self,
        train_file: str = gin.REQUIRED,
        eval_file: str = gin.REQUIRED,
        tokenizer_dir: str | None = None,
        pretrained: str | None = None,
        model_config: T5Config | None = None,
        representation: feat.Representation = "full",
        identity: lin.Identity = "after",
        actions: feat.Actions = "copy",
        max_segment_length: int = 2048,
        segment_stride: int = 1024,
        eval_max_length: int = 4096,
        max_target_length: int | None = None,
        max_decode_length: int | None = None,
        beam_size: int = 4,
        length_penalty: float = 1.0,
        max_depth: int = 8,
        max_clusters: int = 100,
        eval_batch_size: int = 4,
        eval_max_documents: int | None = None,
        predictions_file: str | None = None,
        compute_dtype: str = "float32",
        remat: bool = False,
    ):
        feat.check_representation(representation, identity, actions)
        check_model_source("Seq2seqCoref", "T5", pretrained, model_config, tokenizer_dir)
        self.representation, self.identity, self.actions = representation, identity, actions
        self.beam_size, self.length_penalty, self.eval_batch_size = beam_size, length_penalty, eval_batch_size
        self.max_decode_length = max_decode_length
        self.predictions_file = predictions_file

        self.tokenizer = hf.load_tokenizer(tokenizer_dir or pretrained)
        first_new_id = len(self.tokenizer)
        self.symbols = add_coref_tokens(self.tokenizer, max_clusters if identity == "free" else 0)
        overrides = {"dtype": COMPUTE_DTYPES[compute_dtype], "remat": remat}
        self.pretrained_params = None
        if pretrained is not None:
            model, loaded = hf.load_pretrained(pretrained, **overrides)
            self.pretrained_params, config = init_new_token_rows(loaded, model.config, first_new_id,
                                                                 len(self.tokenizer))
        else:
            config = dataclasses.replace(model_config, **overrides)
            if config.vocab_size < len(self.tokenizer):
                raise ValueError(f"Seq2seqCoref: model_config.vocab_size {config.vocab_size} is smaller than the "
                                 f"tokenizer's {len(self.tokenizer)} tokens (coreference symbols included)")
        self.model = T5(config)
        self.constraint = self._make_constraint(config.vocab_size, max_depth, max_clusters)

        self._train = self._pad(feat.training_examples(
            read_document_files(train_file), self.tokenizer, self.symbols, max_segment_length, segment_stride,
            representation, identity, actions, config.decoder_start_token_id), max_target_length)
        self.eval_documents = read_document_files(eval_file)[:eval_max_documents]
        markers = speaker_marker_ids(self.tokenizer)
        eval_pieces = [feat.tokenize_document(d, self.tokenizer, markers) for d in self.eval_documents]
        self.eval_segments = feat.cut_segments(eval_pieces, eval_max_length, eval_max_length)
        self._jit_decode = jax.jit(self._decode, static_argnums=(4,))

    # ------------------------------------------------------------------------------------------- features

    def _make_constraint(self, vocab_size: int, max_depth: int,
                         max_clusters: int) -> FullLinearizationConstraint | PartialLinearizationConstraint | None:
        integers = integer_token_ids(self.tokenizer)
        # As many digit pieces as the longest cluster number the run can have needs, and no more.
        digits = max(len(self.symbols.encode_int(k)) for k in range(max_clusters))
        if self.representation == "partial":
            return PartialLinearizationConstraint(self.symbols, vocab_size, integers, max_depth=max_depth,
                                                  max_identity_tokens=digits)
        if self.identity == "before":
            return None
        return FullLinearizationConstraint(self.symbols, vocab_size, integers, identity=self.identity,
                                           actions=self.actions, max_depth=max_depth,
                                           max_identity_tokens=digits, max_clusters=max_clusters)

    def _pad(self, examples: list[tuple[list[int], list[int], list[int]]],
             max_target_length: int | None) -> dict[str, np.ndarray]:
        """Padded training arrays; targets longer than `max_target_length` are cut (counted in a warning)."""
        sources, inputs, targets = zip(*examples)
        longest = max(len(t) for t in targets)
        target_length = round_up(min(longest, max_target_length or longest), 8)
        cut = sum(len(t) > target_length for t in targets)
        if cut:
            print(f"Seq2seqCoref: {cut} of {len(targets)} training targets are longer than {target_length} "
                  "tokens and were cut (raise max_target_length)", flush=True)
        source_length = round_up(max(len(s) for s in sources), 8)
        return {"input_ids": pad_rows(sources, source_length, self.model_config.pad_token_id),
                "attention_mask": pad_rows([[1] * len(s) for s in sources], source_length),
                "decoder_input_ids": pad_rows([z[:target_length] for z in inputs], target_length,
                                                   self.model_config.pad_token_id),
                "targets": pad_rows([y[:target_length] for y in targets], target_length),
                "target_mask": pad_rows([[1] * min(len(y), target_length) for y in targets], target_length)}

    @property
    def model_config(self) -> T5Config:
        return self.model.config

    # ------------------------------------------------------------------------------------- method contract

    def train_examples(self) -> dict[str, np.ndarray]:
        return self._train

    def batch_from_features(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Batches of `train_examples()` pass through; those of the coref SeqIO tasks (`inputs`,
        `decoder_input_ids`, `targets`, zero-padded by the feed) get their masks: T5's pad id is 0, and no
        input or target token is (the decoder input starts with the start token 0, so its mask is the targets')."""
        if "inputs" not in features:
            return dict(features)
        targets = features["targets"]
        return {"input_ids": features["inputs"], "attention_mask": (features["inputs"] != 0).astype(np.int32),
                "decoder_input_ids": features["decoder_input_ids"], "targets": targets,
                "target_mask": (targets != 0).astype(np.int32)}

    def init(self, rng: jax.Array, batch: Mapping[str, Any]) -> Params:
        params = self.model.init(rng, batch["input_ids"][:1], batch["attention_mask"][:1],
                                 batch["decoder_input_ids"][:1])["params"]
        if self.pretrained_params is not None:
            params = fill_boxed(params, self.pretrained_params)
        return params

    def loss(self, params: Params, batch: Mapping[str, Any], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        logits = self.model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                  batch["decoder_input_ids"], deterministic=False, rngs={"dropout": rng}).logits
        mask = batch["target_mask"].astype(jnp.float32)
        token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        count = jnp.maximum(mask.sum(), 1.0)
        correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
        return (token_loss * mask).sum() / count, {"token_accuracy": (correct * mask).sum() / count}

    # --------------------------------------------------------------------------------------------- decode

    def _decode(self, params: Params, input_ids: jax.Array, attention_mask: jax.Array, source_length: jax.Array,
                max_length: int) -> jax.Array:
        """Best constrained beam [B, max_length] for each source row (no start token, eos then padding)."""
        cfg, k = self.model_config, self.beam_size
        encoded = self.model.apply({"params": params}, input_ids, attention_mask, method=T5.encode)
        encoded, mask = decoding.repeat_for_beams((encoded, attention_mask), k)
        _, state = self.model.apply({"params": params}, encoded, mask, max_length, method=T5.prepare_cache,
                                    mutable=["cache"])

        def step(cache: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
            logits, new = self.model.apply({"params": params, "cache": cache}, tokens[:, None], mask, max_length,
                                           method=T5.decode_step, mutable=["cache"])
            return logits[:, 0], new["cache"]

        cstate = None
        if self.constraint is not None:
            cstate = decoding.repeat_for_beams(self.constraint.init_state(input_ids, source_length, max_length), k)
        out = decoding.beam_search(step, state["cache"], batch_size=input_ids.shape[0], beam_size=k,
                                   max_length=max_length, start_token=cfg.decoder_start_token_id,
                                   eos_token=cfg.eos_token_id, pad_token=cfg.pad_token_id,
                                   length_penalty=self.length_penalty, constraint=self.constraint,
                                   constraint_state=cstate, beam_invariant_cache=is_cross_attention_cache)
        return out.sequences[:, 0]

    def decode_segments(self, params: Params, segments: list[feat.Segment]) -> list[list[int]]:
        """The best linearization of each segment, up to and including eos when it was reached."""
        sources = [feat.encoder_source(s, self.symbols, self.representation) for s in segments]
        source_length = round_up(max(len(s) for s in sources) + 1, LENGTH_MULTIPLE)  # + eos
        max_length = self.max_decode_length or 2 * source_length
        ids = pad_rows([s + [self.symbols.eos] for s in sources], source_length, self.model_config.pad_token_id)
        mask = pad_rows([[1] * (len(s) + 1) for s in sources], source_length)
        lengths = np.asarray([len(s) for s in sources], np.int32)  # the constraint's source: no eos
        best = [np.asarray(self._jit_decode(params, i, m, n, max_length))
                for i, m, n in fixed_size_batches(self.eval_batch_size, ids, mask, lengths,
                                                  desc="decode segments")]
        rows = np.concatenate(best)[:len(segments)]
        eos = self.symbols.eos
        return [row[:list(row).index(eos) + 1].tolist() if eos in row else row.tolist() for row in rows]

    def parse(self, linearization: list[int], segment: feat.Segment) -> list[list[feat.Span]]:
        """Word-level clusters of a decoded segment."""
        if self.representation == "partial":
            pieces = lin.parse_partial(linearization, segment.ids, self.symbols, segment.sentence_lengths)
        else:
            pieces = lin.parse_full(linearization, self.symbols, self.identity, len(segment.ids))
        return feat.word_clusters(pieces, segment)

    def predict(self, params: Params) -> list[list[list[feat.Span]]]:
        """Predicted word-level clusters of every evaluation document (segments' clusters kept apart)."""
        by_doc: dict[int, list] = defaultdict(list)
        for segment, decoded in zip(self.eval_segments, self.decode_segments(params, self.eval_segments)):
            by_doc[segment.doc_index] += self.parse(decoded, segment)
        return [by_doc[i] for i in range(len(self.eval_documents))]

    def evaluate(self, params: Params) -> Metrics:
        """CoNLL F1 and each metric's F1, mention detection, and the gold-mentions-as-singletons reference."""
        predicted = self.predict(params)
        gold = [d.clusters for d in self.eval_documents]
        if self.predictions_file:
            write_jsonlines(self.predictions_file, [dataclasses.replace(d, clusters=p)
                                                    for d, p in zip(self.eval_documents, predicted)])
        scores = coref_metrics.coref_scores(gold, predicted)
        detection = coref_metrics.mention_detection(gold, predicted)
        singletons = [[[span] for cluster in doc for span in cluster] for doc in gold]
        metrics = {"conll_f1": scores["conll_f1"],
                   **{f"{name}_f1": scores[name]["f1"] for name in ("muc", "bcub", "ceafe", "ceafm", "blanc")},
                   "mention_f1": detection["f1"],
                   "detected_mention_clustering_f1": coref_metrics.detected_mention_clustering(gold, predicted),
                   "singletons_baseline_conll_f1": coref_metrics.coref_scores(gold, singletons)["conll_f1"]}
        return {k: float(v) for k, v in metrics.items()}
