"""Interoperability with other ecosystems: Hugging Face transformers export/import."""
