"""lqae: images to words of a language model's vocabulary, and back (Language-Quantized AutoEncoder)."""

__version__ = "0.1.0"
