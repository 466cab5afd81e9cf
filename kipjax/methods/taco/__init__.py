"""TACO (chapter 4): multi-task dense retrieval with one shared T5 in the ST5-EncDec form."""
