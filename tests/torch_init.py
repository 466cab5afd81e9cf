"""Random weights for the PyTorch reference models of the parity tests."""
import torch

NORM_WEIGHTS = ("LayerNorm.weight", "layer_norm.weight")


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Random values everywhere (norm scales around 1), so a misplaced norm, bias or head cannot go unnoticed."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if name.endswith(NORM_WEIGHTS) else 0.0))
    return model.eval()
