"""LMRC stage 2, relation classification: a Llama decoder, fine-tuned (LoRA or fully), answers which relations
hold for each listed pair of a prompt (prompts.py), under constrained decoding (answer_constraint.py).

Training: supervised fine-tuning with the causal LM loss on the answer tokens and EOS only (rc_features.py
chooses the pairs: related ones, stage-1 candidates if given, sampled negatives). Evaluation, which is also
the end-to-end LMRC inference: the evaluation documents' pairs (stage 1's candidates from a candidates file,
or every ordered pair for the ablation without stage 1) are grouped into prompts; each prompt but its final
`:` cue is run through the model once to fill the key/value cache, then beam search (greedy with one beam)
continues from the cue under the answer constraint, so every answer is a well-formed list of triples with
valid relation names. Answers are decoded to text and parsed back into facts (malformed parts are counted,
never fatal: they can only occur with `constrained=False`), written in DocRED's submission format, and
scored with DocRED's official metrics, next to the entity-type baseline (type_baseline.py) on all pairs and
on the same pairs.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kipjax import decoding
from kipjax.data.docred import (DocredDocument, Prediction, read_candidate_pairs, read_docred, read_rel2id,
                                read_rel_info, write_predictions)
from kipjax.data.padding import fixed_size_batches, pad_rows, round_up
from kipjax.methods.base import Method, Metrics, Params
from kipjax.methods.encoder_setup import COMPUTE_DTYPES
from kipjax.methods.model_source import check_model_source
from kipjax.methods.lmrc import rc_features
from kipjax.methods.lmrc.answer_constraint import answer_constraint_from_tokenizer, encode_pair_lists
from kipjax.methods.lmrc.prompts import Pair, parse_answer
from kipjax.methods.lmrc.type_baseline import fit_type_rules, predict_by_type
from kipjax.metrics.docre import docre_scores
from kipjax.models import hf
from kipjax.models.llama import Llama, LlamaConfig, is_shared_prompt, lora_trainable_mask, prefill_shared_prompt
from kipjax.partitioning import fill_boxed
from kipjax.run_log import track

LENGTH_MULTIPLE = 32  # padded lengths are rounded up to this, so batches of similar prompts share compiled shapes


def relation_names_of(rel_info_file: str, rel2id_file: str | None = None) -> dict[str, str]:
    """Property id -> name, in rel2id order (`Na` left out) when rel2id is given, else in rel_info order."""
    rel2id = read_rel2id(rel2id_file) if rel2id_file else None
    names = read_rel_info(rel_info_file, rel2id)
    if rel2id is None:
        return names
    return {relation: names[relation] for relation in sorted(rel2id, key=rel2id.__getitem__) if relation != "Na"}


def read_stage1_candidates(path: str, docs: list[DocredDocument]) -> list[list[Pair]]:
    """Per document, the pairs stage 1 proposed in `path`; a missing file says how to write it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"RelationClassification: no candidates file {path}; run stage 1 first "
                                "(RelationCandidateProposal with candidates_file set writes it at evaluation), or "
                                "set the candidates file to None to classify every pair")
    return read_candidate_pairs(path, docs)


@dataclasses.dataclass(frozen=True)
class Classified:
    """Stage 2's output over a set of prompts."""

    predictions: list[Prediction]
    malformed: int  # malformed answer parts (see prompts.parse_answer)
    num_prompts: int
    num_pairs: int


@gin.configurable
class RelationClassification(Method):
    """Fine-tunes a Llama to classify candidate pairs and runs (and scores) the LMRC pipeline's second stage.

    Args:
      train_file / eval_file: DocRED-format JSON (train_annotated.json / dev.json, Re-DocRED *_revised.json).
      rel_info_file / rel2id_file: relation names, listed in the prompt in rel2id order when it is given.
      tokenizer_dir: the tokenizer (default: `pretrained`'s). pretrained: a local Hugging Face Llama directory;
        else `model_config` trains from scratch.
      lora_rank / lora_alpha / lora_targets: None keeps the config's; lora_rank > 0 trains only the adapters.
      group_size: pairs per prompt (18 in the paper). negative_ratio: random unrelated pairs per related pair
        in the training prompts. negative_draws: independent draws of those negatives, each a separate set of
        prompts for the document (more varied prompts from a small corpus). train_candidates_file: stage-1 candidates of the training documents, added
        to the training pairs. seed: the negative sampling.
      eval_candidates_file: stage-1 candidates of the evaluation documents (`RelationCandidateProposal`'s
        `candidates_file`); None classifies every ordered pair (the paper's ablation without stage 1).
      max_length: longest training sequence (prompt + answer) in tokens.
      constrained: decode under the answer constraint (False: free decoding, for the ablation).
      beam_size / length_penalty: decoding search. extra_triples: triples an answer may hold beyond one per
        pair (pairs with several relations), which sets the decoding budget.
      eval_batch_size: prompts decoded together. eval_max_documents: the first N evaluation documents only.
      predictions_file: if set, evaluation writes its facts there in DocRED's submission format.
    """

    def __init__(
        self,
        train_file: str = gin.REQUIRED,
        eval_file: str = gin.REQUIRED,
        rel_info_file: str = gin.REQUIRED,
        rel2id_file: str | None = None,
        tokenizer_dir: str | None = None,
        pretrained: str | None = None,
        model_config: LlamaConfig | None = None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        lora_targets: Sequence[str] | None = None,
        group_size: int = 18,
        negative_ratio: float = 1.0,
        negative_draws: int = 1,
        train_candidates_file: str | None = None,
        seed: int = 0,
        eval_candidates_file: str | None = None,
        max_length: int = 4096,
        constrained: bool = True,
        beam_size: int = 1,
        length_penalty: float = 1.0,
        extra_triples: int = 4,
        eval_batch_size: int = 4,
        eval_max_documents: int | None = None,
        predictions_file: str | None = None,
        compute_dtype: str = "float32",
        remat: bool = False,
        scan_layers: bool = False,
    ):
        check_model_source("RelationClassification", "Llama", pretrained, model_config, tokenizer_dir)
        self.tokenizer = hf.load_tokenizer(tokenizer_dir or pretrained)
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(self.tokenizer, name) is None:
                raise ValueError(f"RelationClassification: the tokenizer has no {name[:-3]}")
        overrides: dict[str, Any] = {"dtype": COMPUTE_DTYPES[compute_dtype], "remat": remat,
                                     "scan_layers": scan_layers}
        for field, value in (("lora_rank", lora_rank), ("lora_alpha", lora_alpha), ("lora_targets", lora_targets)):
            if value is not None:
                overrides[field] = value
        self.pretrained_params = None
        if pretrained is not None:
            self.model, self.pretrained_params = hf.load_pretrained(pretrained, **overrides)
        else:
            self.model = Llama(dataclasses.replace(model_config, **overrides))
        if self.model.config.vocab_size < len(self.tokenizer):
            raise ValueError(f"RelationClassification: the model's vocab_size {self.model.config.vocab_size} is "
                             f"smaller than the tokenizer's {len(self.tokenizer)} tokens")

        self.relation_names = relation_names_of(rel_info_file, rel2id_file)
        self.group_size, self.constrained = group_size, constrained
        self.beam_size, self.length_penalty, self.extra_triples = beam_size, length_penalty, extra_triples
        self.eval_batch_size, self.predictions_file = eval_batch_size, predictions_file
        self.constraint = answer_constraint_from_tokenizer(self.tokenizer, self.relation_names,
                                                           self.model.config.vocab_size)

        self.train_documents = read_docred(train_file, self.relation_names.keys())
        train_candidates = (read_stage1_candidates(train_candidates_file, self.train_documents)
                            if train_candidates_file else [[] for _ in self.train_documents])
        self.train_rows = rc_features.training_prompt_rows(self.train_documents, train_candidates, negative_ratio,
                                                           negative_draws, seed, group_size)
        self.max_length = max_length

        self.eval_documents = read_docred(eval_file)[:eval_max_documents]
        self.eval_pairs = (read_stage1_candidates(eval_candidates_file, self.eval_documents) if eval_candidates_file
                           else [rc_features.all_pairs(d) for d in self.eval_documents])
        self.type_rules = fit_type_rules(self.train_documents)
        self._jit_decode = jax.jit(self._decode, static_argnums=(3, 4))

    # ------------------------------------------------------------------------------------- method contract

    def train_examples(self) -> dict[str, np.ndarray]:
        sequences = rc_features.training_sequences(self.tokenizer, self.train_documents, self.train_rows,
                                                   self.relation_names, self.max_length)
        return rc_features.training_arrays(sequences, self.max_length)

    def batch_from_features(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows of `train_examples()` or of the DocRED RC SeqIO tasks (the same sequences, zero-padded by the
        feed; the masks are features, so no pad id is guessed)."""
        return {name: features[name] for name in rc_features.SEQUENCE_FEATURES}

    def init(self, rng: jax.Array, batch: Mapping[str, Any]) -> Params:
        params = self.model.init(rng, batch["input_ids"][:1], batch["attention_mask"][:1])["params"]
        if self.pretrained_params is not None:
            params = fill_boxed(params, self.pretrained_params)
        return params

    def trainable_mask(self, params: Params) -> Any:
        return lora_trainable_mask(params) if self.model.config.lora_rank > 0 else None

    def loss(self, params: Params, batch: Mapping[str, Any], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        logits = self.model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                  deterministic=False, rngs={"dropout": rng}).logits
        mask = batch["loss_mask"].astype(jnp.float32)
        token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        count = jnp.maximum(mask.sum(), 1.0)
        correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
        return (token_loss * mask).sum() / count, {"answer_token_accuracy": (correct * mask).sum() / count}

    # --------------------------------------------------------------------------------------------- decode

    def _decode(self, params: Params, prompts: jax.Array, prompt_mask: jax.Array, cue_token: int, max_new: int,
                affixes: Mapping[str, jax.Array]) -> jax.Array:
        """Best answer [B, max_new] per left-padded prompt (its final cue token left out): eos, then padding."""
        k, batch = self.beam_size, prompts.shape[0]
        cache = prefill_shared_prompt(self.model, params, prompts, prompt_mask, k, max_new)  # one prompt copy

        def step(cache: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
            out, new = self.model.apply({"params": params, "cache": cache}, tokens[:, None], method=Llama.decode_step,
                                        mutable=["cache"])
            return out.logits[:, 0], new["cache"]

        cstate = None
        if self.constrained:
            cstate = decoding.repeat_for_beams(self.constraint.init_state(**affixes, max_length=max_new), k)
        out = decoding.beam_search(step, cache, batch_size=batch, beam_size=k,
                                   max_length=max_new, start_token=cue_token, eos_token=self.tokenizer.eos_token_id,
                                   length_penalty=self.length_penalty,
                                   constraint=self.constraint if self.constrained else None, constraint_state=cstate,
                                   beam_invariant_cache=is_shared_prompt)
        return out.sequences[:, 0]

    def decode_budget(self, affixes: Mapping[str, np.ndarray]) -> int:
        """Decoder steps for a batch of pair lists (`encode_pair_lists`): the longest complete answer with one
        triple per pair, plus `extra_triples` of the longest triple, rounded up to share compiled shapes."""
        minimum = np.asarray(self.constraint.minimal_length(affixes["prefix_length"], affixes["suffix_length"],
                                                            affixes["num_pairs"]))
        longest_triple = int(affixes["prefix_length"].max() + affixes["suffix_length"].max()
                             + self.constraint.trie.remaining[0].max())
        return round_up(int(minimum.max()) + self.extra_triples * longest_triple, LENGTH_MULTIPLE)

    def answer(self, params: Params, docs: Sequence[DocredDocument], rows: Sequence[rc_features.PromptRow]
               ) -> list[str]:
        """The decoded answer text of each prompt row. Rows are decoded in batches of similar prompt length,
        each padded to its own longest prompt and answer budget (rounded up, so batches share compilations)."""
        prompts = [rc_features.encode_prompt(self.tokenizer, docs[r.doc_index], r.pairs, self.relation_names)
                   for r in rows]
        cues = {p[-1] for p in prompts}
        if len(cues) != 1:
            raise ValueError(f"RelationClassification: prompts end in different tokens {sorted(cues)}; the "
                             "tokenizer must encode the closing 'Answer :' cue the same way everywhere")
        cue = cues.pop()
        order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))
        texts: list[str] = [""] * len(rows)
        starts = range(0, len(order), self.eval_batch_size)
        for start in track(starts, total=len(order), desc="decode answers", unit="prompts",
                           rows_per_item=self.eval_batch_size):
            batch = order[start:start + self.eval_batch_size]
            decoded = self._decode_batch(params, [prompts[i][:-1] for i in batch],
                                         [(docs[rows[i].doc_index], rows[i].pairs) for i in batch], cue)
            for i, ids in zip(batch, decoded):
                texts[i] = self.tokenizer.decode(ids, skip_special_tokens=True)
        return texts

    def _decode_batch(self, params: Params, prompts: list[list[int]],
                      pair_lists: list[tuple[DocredDocument, Sequence[Pair]]], cue: int) -> list[list[int]]:
        """Answer token ids (up to EOS) for up to `eval_batch_size` prompts without their cue token."""
        width = round_up(max(len(p) for p in prompts), LENGTH_MULTIPLE)
        affixes = encode_pair_lists(self.tokenizer, pair_lists, max_pairs=self.group_size)
        names = sorted(affixes)
        inputs, mask, *values = next(iter(fixed_size_batches(
            self.eval_batch_size, pad_rows(prompts, width, left=True),
            pad_rows([[1] * len(p) for p in prompts], width, left=True), *(affixes[n] for n in names))))
        out = np.asarray(self._jit_decode(params, inputs, mask, cue, self.decode_budget(affixes),
                                          dict(zip(names, values))))
        eos = self.tokenizer.eos_token_id
        return [row[:row.index(eos)] if eos in row else row for row in out[:len(prompts)].tolist()]

    def classify(self, params: Params, docs: Sequence[DocredDocument], pairs_per_doc: Sequence[Sequence[Pair]]
                 ) -> Classified:
        """Stage 2 over the given pairs of each document: their predicted facts and the malformed count."""
        rows = rc_features.prompt_rows(pairs_per_doc, self.group_size)
        texts = self.answer(params, docs, rows) if rows else []
        predictions, malformed = [], 0
        for row, text in zip(rows, texts):
            doc = docs[row.doc_index]
            parsed = parse_answer(text, doc, row.pairs, self.relation_names)
            malformed += parsed.malformed
            predictions += [Prediction(doc.title, h, t, r) for h, t, r in parsed.facts]
        return Classified(predictions, malformed, len(rows), sum(len(p) for p in pairs_per_doc))

    def evaluate(self, params: Params) -> Metrics:
        """DocRED scores of stage 2 on the evaluation pairs, the type baseline on all and on the same pairs."""
        docs = self.eval_documents
        result = self.classify(params, docs, self.eval_pairs)
        if self.predictions_file:
            write_predictions(self.predictions_file, result.predictions)
        scores = docre_scores(docs, result.predictions, self.train_documents)
        every_pair = [rc_features.all_pairs(d) for d in docs]
        baseline_all = docre_scores(docs, predict_by_type(self.type_rules, docs, every_pair))
        baseline_same = docre_scores(docs, predict_by_type(self.type_rules, docs, self.eval_pairs))
        gold_pairs = sum(len(rc_features.related_pairs(d)) for d in docs)
        covered = sum(len(rc_features.related_pairs(d) & set(p)) for d, p in zip(docs, self.eval_pairs))
        return {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"],
                "ign_f1": scores["ign_f1"], "malformed_parts": float(result.malformed),
                "prompts": float(result.num_prompts), "pairs_classified": float(result.num_pairs),
                "related_pair_coverage": covered / gold_pairs if gold_pairs else 0.0,
                "type_baseline_all_pairs_f1": baseline_all["f1"], "type_baseline_same_pairs_f1": baseline_same["f1"]}
