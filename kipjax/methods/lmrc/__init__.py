"""LMRC: relation candidate proposal (stage 1) and LLM relation classification (stage 2) for DocRED."""
