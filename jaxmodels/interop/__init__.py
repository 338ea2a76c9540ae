"""Converters between jaxmodels checkpoints and other frameworks' (Hugging Face transformers)."""
