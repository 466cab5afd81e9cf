"""ImpRAG (chapter 5): retrieval-augmented generation with implicit queries, one Llama for both."""
