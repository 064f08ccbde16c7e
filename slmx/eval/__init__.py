"""Evaluation: perplexity of a model over text.

    from slmx.eval import perplexity
    r = perplexity(slmx.load("runs/tiny"), open("file.py").read(), ctx=256, stride=128)
    print(r.ppl)
"""
from .perplexity import METHODS, PerplexityResult, llamacpp_nll, perplexity, sliding_window_nll, window_nll

__all__ = ["perplexity", "PerplexityResult", "sliding_window_nll", "llamacpp_nll", "window_nll", "METHODS"]
