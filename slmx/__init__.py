"""slmx: small language models on the CPU, fast.

    import slmx
    model = slmx.load("gemma3-270m")            # or a path to a .gguf file
    print(model.generate("The capital of France is", max_new_tokens=32, temperature=0).text)
"""
from .errors import FormatError, ModelNotFoundError, SlmxError

__version__ = "0.1.0"
__all__ = ["FormatError", "ModelNotFoundError", "SlmxError", "Tokenizer", "load", "ops", "gguf",
           "__version__"]


def __getattr__(name):
    # Lazy: `import slmx` stays cheap; the compiled kernels load on first use.
    if name == "load":
        from .api import load
        return load
    if name == "Tokenizer":
        from .tokenizer import Tokenizer
        return Tokenizer
    if name in ("ops", "gguf"):
        import importlib
        return importlib.import_module("slmx.ops" if name == "ops" else "slmx.formats.gguf")
    raise AttributeError(f"module 'slmx' has no attribute {name!r}")


def __dir__():
    # the lazy names too, for tab completion and dir()
    return sorted(set(globals()) | set(__all__))
