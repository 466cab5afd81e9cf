"""Build BERT-style WordPiece tokenizers from a local corpus and save them where `AutoTokenizer` loads them.

Used for the demo data (a tiny BERT trained from scratch needs a vocabulary fitted to its corpus) and for
any corpus without a pretrained vocabulary. Besides BERT's special tokens, every vocabulary reserves the
mention-boundary markers and the title separator used by `kipjax.data.featurize`, as *special* tokens so
they are never split or lower-cased.

Two ways to get the vocabulary:
- `train_wordpiece_tokenizer`: the `tokenizers` WordPiece trainer (fast, for real corpora). It breaks ties
  between equally frequent merges in hash-map order, so two runs can give different vocabularies.
- `word_vocabulary` + `save_wordpiece_tokenizer`: every corpus word as a whole token plus single-character
  pieces as fallback, ordered deterministically; this is what makes the bundled demo reproducible byte for
  byte.

The saved folder holds tokenizer.json (the full pipeline), tokenizer_config.json, special_tokens_map.json
and vocab.txt. The pipeline is handed to transformers as an object, because in transformers 5
`BertTokenizerFast(vocab_file=...)` silently ignores the vocabulary file.
"""
from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast, PreTrainedTokenizerBase

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
MENTION_START = "[M_START]"
MENTION_END = "[M_END]"
ENTITY_TITLE_SEP = "[ENT]"
MARKER_TOKENS = (MENTION_START, MENTION_END, ENTITY_TITLE_SEP)
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK) + MARKER_TOKENS
CONTINUATION_PREFIX = "##"


def _bert_pipeline(model: models.Model, lowercase: bool) -> Tokenizer:
    """BERT's normalizer, pre-tokenizer and decoder around a WordPiece model."""
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    return tokenizer


def _save(tokenizer: Tokenizer, out_dir: str | Path, lowercase: bool,
          model_max_length: int) -> PreTrainedTokenizerBase:
    """Add the [CLS] ... [SEP] template, write the tokenizer folder and return the transformers tokenizer."""
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)])
    wrapped = BertTokenizerFast(
        tokenizer_object=tokenizer, do_lower_case=lowercase, model_max_length=model_max_length,
        pad_token=PAD, unk_token=UNK, cls_token=CLS, sep_token=SEP, mask_token=MASK,
        additional_special_tokens=list(MARKER_TOKENS))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out))
    vocab = sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
    (out / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")
    special_map = {"pad_token": PAD, "unk_token": UNK, "cls_token": CLS, "sep_token": SEP, "mask_token": MASK,
                   "additional_special_tokens": list(MARKER_TOKENS)}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
    return wrapped


def train_wordpiece_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8000,
                              min_frequency: int = 2, lowercase: bool = True,
                              model_max_length: int = 512) -> PreTrainedTokenizerBase:
    """Fit WordPiece on `texts` with the `tokenizers` trainer, save to `out_dir` (ids 0..7 are
    `SPECIAL_TOKENS`) and return the tokenizer."""
    tokenizer = _bert_pipeline(models.WordPiece(unk_token=UNK), lowercase)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(SPECIAL_TOKENS),
                                        continuing_subword_prefix=CONTINUATION_PREFIX, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _save(tokenizer, out_dir, lowercase, model_max_length)


def word_vocabulary(texts: Iterable[str], min_frequency: int = 1, lowercase: bool = True) -> list[str]:
    """A deterministic WordPiece vocabulary: `SPECIAL_TOKENS`, every character as a word-initial and a
    continuation piece (so any word of these characters can be spelled), then every word seen at least
    `min_frequency` times, by decreasing count and then alphabetically."""
    pipeline = _bert_pipeline(models.WordPiece(unk_token=UNK), lowercase)
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        normalized = pipeline.normalizer.normalize_str(text)
        counts.update(word for word, _ in pipeline.pre_tokenizer.pre_tokenize_str(normalized))
    characters = sorted({c for word in counts for c in word})
    vocab = list(SPECIAL_TOKENS) + characters + [CONTINUATION_PREFIX + c for c in characters]
    known = set(vocab)
    words = sorted((w for w, n in counts.items() if n >= min_frequency and w not in known),
                   key=lambda w: (-counts[w], w))
    return vocab + words


def save_wordpiece_tokenizer(vocab: Sequence[str], out_dir: str | Path, lowercase: bool = True,
                             model_max_length: int = 512) -> PreTrainedTokenizerBase:
    """Save a BERT-style tokenizer over a given WordPiece vocabulary (which must contain `SPECIAL_TOKENS`)."""
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"vocabulary lacks the special tokens {missing}")
    if len(set(vocab)) != len(vocab):
        raise ValueError("vocabulary has duplicate tokens")
    model = models.WordPiece(vocab={token: i for i, token in enumerate(vocab)}, unk_token=UNK,
                             continuing_subword_prefix=CONTINUATION_PREFIX)
    tokenizer = _bert_pipeline(model, lowercase)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return _save(tokenizer, out_dir, lowercase, model_max_length)
