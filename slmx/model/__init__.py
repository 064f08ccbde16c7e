"""Model configuration, architecture registry and the transformer forward built from kernels."""
from .config import ModelConfig
from .transformer import Transformer

__all__ = ["ModelConfig", "Transformer"]
