"""Data: sources, tokenizers and grain pipelines that turn records into batches."""
