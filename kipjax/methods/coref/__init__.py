"""Seq2seq coreference resolution (chapter 7): sequence representations of an annotation and mention alignment."""
