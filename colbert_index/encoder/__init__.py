"""Local ColBERT checkpoints -> token embeddings. Needs the ``text`` extra (transformers, safetensors)."""

from colbert_index.encoder.encoder import Encoder, merge_windows

__all__ = ["Encoder", "merge_windows"]
