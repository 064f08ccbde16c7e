"""Cost of one sampling step at Gemma's vocabulary (262144 logits): the Sampler pipeline under
common settings and the log-probability of the chosen token with 5 alternatives."""
import numpy as np

from slmx.infer.sampling import Sampler, token_logprobs

V = 262144
CONFIGS = {
    "greedy": dict(temperature=0),
    "T0.8_k40_p0.95": dict(),
    "T1_full_vocab": dict(temperature=1.0, top_k=0, top_p=1.0),
    "T1_top_p0.9": dict(temperature=1.0, top_k=0, top_p=0.9),
    "T1_min_p0.05": dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.05),
    "penalties_bias_k40": dict(repeat_penalty=1.1, frequency_penalty=0.2, presence_penalty=0.1,
                               logit_bias={5: -3.0, 7: 2.0}),
    "T1_typical0.9": dict(temperature=1.0, top_k=0, top_p=1.0, typical_p=0.9),
}


def _logits():
    # a spread like Gemma 3 270M's next-token logits (about -22 .. 19)
    rng = np.random.default_rng(0)
    x = rng.normal(-2.0, 3.5, V).astype(np.float32)
    x[rng.integers(0, V, 50)] += 15.0
    return x


class SamplerStep:
    params = list(CONFIGS)
    param_names = ["config"]

    def setup(self, config):
        self.logits = _logits()
        self.prev = list(range(1000, 1064))
        self.sampler = Sampler(seed=0, **CONFIGS[config])
        self.sampler(self.logits, self.prev)        # buffers allocated once, outside the timing

    def time_sample(self, config):
        self.sampler(self.logits, self.prev)


class TokenLogprobs:
    def setup(self):
        self.logits = _logits()

    def time_logprob_top5(self):
        token_logprobs(self.logits, 3, 5)
