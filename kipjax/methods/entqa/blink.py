"""Import BLINK's bi-encoder checkpoint as EntQA's two retriever encoders, as Hugging Face BERT directories.

    python -m kipjax.methods.entqa.blink --checkpoint /models/blink/biencoder_wiki_large.bin \\
        --bert_dir /models/bert-large-uncased --out /models/entqa_blink [--force]

EntQA initialises its passage encoder and its entity encoder with BLINK's bi-encoder (Wu et al. 2020): a
PyTorch state dict whose `context_encoder.bert_model.*` tensors are the mention (here: passage) encoder and
whose `cand_encoder.bert_model.*` tensors are the entity encoder, each a BERT-large. The import writes
OUT/passage_encoder and OUT/entity_encoder, each a BERT directory (`config.json` and the tokenizer files of
`--bert_dir`, the BERT BLINK was trained from, and `model.safetensors` with the encoder's tensors under
BertModel's names), which `kipjax.models.hf.load_pretrained` and transformers both read. BLINK's optional
`additional_linear` projections are not part of EntQA's retriever; the import refuses a checkpoint that has
them rather than drop them silently.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import safetensors.numpy

from kipjax.models.hf import CONFIG_FILE, SAFETENSORS_FILE
from kipjax.run_log import atomic_write_directory

ENCODER_PREFIXES = {"passage_encoder": "context_encoder.bert_model.", "entity_encoder": "cand_encoder.bert_model."}
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def split_biencoder(state_dict: Mapping[str, np.ndarray], source: str) -> dict[str, dict[str, np.ndarray]]:
    """The two encoders' tensors, keyed by BertModel's own names (the BLINK prefixes stripped)."""
    parts: dict[str, dict[str, np.ndarray]] = {name: {} for name in ENCODER_PREFIXES}
    extra = []
    for key, tensor in state_dict.items():
        name = next((n for n, prefix in ENCODER_PREFIXES.items() if key.startswith(prefix)), None)
        if name is None:
            extra.append(key)
        else:
            parts[name][key[len(ENCODER_PREFIXES[name]):]] = np.ascontiguousarray(tensor)
    if extra:
        raise ValueError(f"{source}: tensors outside the two BERT encoders, e.g. {sorted(extra)[:3]}; EntQA's "
                         "retriever has no extra projection (BLINK's additional_linear)")
    missing = [ENCODER_PREFIXES[n] for n, tensors in parts.items() if not tensors]
    if missing:
        raise ValueError(f"{source}: no tensors under {missing}; expected BLINK's bi-encoder state dict")
    return parts


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
    import torch
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()}


def import_blink_biencoder(checkpoint: str, bert_dir: str, out_dir: str, force: bool = False) -> Path:
    """Writes OUT/passage_encoder and OUT/entity_encoder (module docstring), atomically."""
    bert = Path(bert_dir)
    if not (bert / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{bert_dir}: no {CONFIG_FILE}; give the BERT directory BLINK was trained from")
    parts = split_biencoder(_read_state_dict(checkpoint), checkpoint)

    def write(folder: Path) -> None:
        for name, tensors in parts.items():
            target = folder / name
            target.mkdir(parents=True)
            shutil.copyfile(bert / CONFIG_FILE, target / CONFIG_FILE)
            for tokenizer_file in TOKENIZER_FILES:
                if (bert / tokenizer_file).is_file():
                    shutil.copyfile(bert / tokenizer_file, target / tokenizer_file)
            safetensors.numpy.save_file(tensors, str(target / SAFETENSORS_FILE), metadata={"format": "pt"})

    return atomic_write_directory(out_dir, write, force=force)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="BLINK's biencoder_wiki_large.bin")
    parser.add_argument("--bert_dir", required=True, help="the BERT directory BLINK started from (config, vocab)")
    parser.add_argument("--out", required=True, help="folder to create")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    out = import_blink_biencoder(args.checkpoint, args.bert_dir, args.out, force=args.force)
    print(f"wrote {out / 'passage_encoder'} and {out / 'entity_encoder'}")


if __name__ == "__main__":
    main()
