"""kipjax: knowledge-intensive and entity-centric NLP in JAX/Flax."""
