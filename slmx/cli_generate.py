"""`slmx generate`'s sampling, log-probability and beam-search flags: one name per option, the same as
LanguageModel.generate's argument (`--top-p` is `top_p`); checked before the model loads."""
import json
import math

from .infer.beam import check_beam_options
from .infer.sampling import Sampler


def _early_stopping(s):
    v = s.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    if v == "never":
        return "never"
    raise ValueError(f"--early-stopping must be true, false or never, got {s!r}")


def add_generate_flags(g):
    """Register the flags on the `generate` sub-parser (temperature/top-k/top-p/seed are there already)."""
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the best one's probability (0 = off)")
    g.add_argument("--typical-p", type=float, default=1.0, help="locally typical sampling mass (1 = off)")
    g.add_argument("--repeat-penalty", type=float, default=1.0,
                   help="divide positive / multiply negative logits of recent tokens (1 = off)")
    g.add_argument("--repeat-last-n", type=int, default=64,
                   help="previous tokens the penalties look at (64; 0 = none, -1 = all)")
    g.add_argument("--frequency-penalty", type=float, default=0.0, help="minus this x count of each recent token")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="minus this for each token seen recently")
    g.add_argument("--logit-bias", action="append", default=None, metavar="ID=BIAS",
                   help="add BIAS to token ID's logit (repeatable; BIAS may be -inf; or a JSON object)")
    g.add_argument("--logprobs", action="store_true", help="print each new token's log-probability to stderr")
    g.add_argument("--top-logprobs", type=int, default=0, help="also print the N most likely alternatives")
    g.add_argument("--num-beams", type=int, default=1, help="beam search with N beams (1 = sampling)")
    g.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam score = sum logprob / length ** this (1.0)")
    g.add_argument("--early-stopping", default="false", metavar="{true,false,never}",
                   help="beam search stop rule, as Hugging Face's (false)")


def parse_logit_bias(items):
    """["ID=BIAS", ..., or JSON objects] -> {id: bias}."""
    if not items:
        return None
    out = {}
    for it in items:
        it = it.strip()
        if it.startswith("{"):
            try:
                d = json.loads(it)
            except json.JSONDecodeError as e:
                raise ValueError(f"--logit-bias: bad JSON {it!r}: {e}") from None
            if not isinstance(d, dict):
                raise ValueError(f"--logit-bias: a JSON object is needed, got {it!r}")
            pairs = list(d.items())
        else:
            if "=" not in it:
                raise ValueError(f"--logit-bias must be ID=BIAS, got {it!r}")
            k, v = it.split("=", 1)
            try:
                v = float(v)
            except ValueError:
                raise ValueError(f"--logit-bias: bias of {k!r} is not a number: {v!r}") from None
            pairs = [(k.strip(), v)]
        for k, v in pairs:
            try:
                i = int(k)
            except (TypeError, ValueError):
                raise ValueError(f"--logit-bias: token id {k!r} is not an integer") from None
            out[i] = v
    return out


def generate_kwargs(a):
    """LanguageModel.generate keyword arguments from the parsed flags."""
    return dict(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed, min_p=a.min_p,
                typical_p=a.typical_p, repeat_penalty=a.repeat_penalty, repeat_last_n=a.repeat_last_n,
                frequency_penalty=a.frequency_penalty, presence_penalty=a.presence_penalty,
                logit_bias=parse_logit_bias(a.logit_bias), logprobs=a.logprobs, top_logprobs=a.top_logprobs,
                num_beams=a.num_beams, length_penalty=a.length_penalty,
                early_stopping=_early_stopping(a.early_stopping))


def check_options(kw):
    """ValueError naming the bad option, before any model is loaded."""
    Sampler(temperature=kw["temperature"], top_k=kw["top_k"], top_p=kw["top_p"], seed=kw["seed"],
            min_p=kw["min_p"], typical_p=kw["typical_p"], repeat_penalty=kw["repeat_penalty"],
            repeat_last_n=kw["repeat_last_n"], frequency_penalty=kw["frequency_penalty"],
            presence_penalty=kw["presence_penalty"], logit_bias=kw["logit_bias"])
    if kw["top_logprobs"] < 0:
        raise ValueError(f"top_logprobs must be >= 0, got {kw['top_logprobs']}")
    check_beam_options(kw["num_beams"], kw["length_penalty"], kw["early_stopping"])


def print_extras(r, tokenizer, f):
    """Log-probabilities (one line per token) and the beams of a GenerationResult, to f."""
    if r.logprobs is not None:
        for t in r.logprobs:
            piece = tokenizer.decode([t.token_id])
            alts = " ".join(f"{tokenizer.decode([i])!r}:{lp:.4f}" for i, lp in t.top)
            print(f"logprob {t.token_id:>7} {piece!r:>16} {t.logprob:9.4f} "
                  f"(p={math.exp(t.logprob):.4f}){'  top: ' + alts if alts else ''}", file=f)
    if r.beams is not None:
        for i, b in enumerate(r.beams):
            print(f"beam {i}: score {b.score:.4f} (sum logprob {b.sum_logprob:.4f}, {b.n_scored} tokens, "
                  f"{b.finish_reason}) {b.text!r}", file=f)
