"""ssrl: self-supervised reflective learning of speaker embeddings, as a reproducible workflow."""

__version__ = "0.1.0"
