"""Random weights for the PyTorch reference models of the parity tests, and random checkpoints saved from them."""
import json

import safetensors.torch
import torch
import transformers

NORM_WEIGHTS = ("LayerNorm.weight", "layer_norm.weight")


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Random values everywhere (norm scales around 1), so a misplaced norm, bias or head cannot go unnoticed."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if name.endswith(NORM_WEIGHTS) else 0.0))
    return model.eval()


def save_random_t5(config: transformers.T5Config, path, hub_untied_head: bool = False) -> None:
    """A randomized transformers T5 saved to `path` with `save_pretrained`; with `hub_untied_head`, edited into
    the Hub's FLAN-T5 / v1.1 form (`tie_word_embeddings: false`, no `scale_decoder_outputs` key, its own
    `lm_head.weight`)."""
    randomized(transformers.T5ForConditionalGeneration(config)).save_pretrained(path)
    if hub_untied_head:
        hf_config = json.loads((path / "config.json").read_text())
        hf_config.pop("scale_decoder_outputs", None)
        hf_config["tie_word_embeddings"] = False
        (path / "config.json").write_text(json.dumps(hf_config))
        state = safetensors.torch.load_file(str(path / "model.safetensors"))
        state["lm_head.weight"] = 0.2 * torch.randn(config.vocab_size, config.d_model,
                                                    generator=torch.Generator().manual_seed(1))
        safetensors.torch.save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
