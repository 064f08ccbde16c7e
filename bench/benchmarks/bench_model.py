"""End-to-end tokens/s on Gemma 3 270M Q4_K_M (2 threads): prefill of 512 tokens, decode of 32."""
import slmx
from slmx.bench import model_throughput


class Gemma3Throughput:
    timeout = 600
    number = 1
    repeat = 1

    def setup_cache(self):
        model = slmx.load("gemma3-270m", threads=2, n_ctx=1024)
        return model_throughput(model, n_prompt=512, n_decode=32, repeats=3)

    def track_decode_tokens_per_s(self, r):
        return r["decode_tokens_per_s"]
    track_decode_tokens_per_s.unit = "tokens/s"

    def track_prefill_tokens_per_s(self, r):
        return r["prefill_tokens_per_s"]
    track_prefill_tokens_per_s.unit = "tokens/s"

    def track_decode_weight_gb_per_s(self, r):
        return r["decode_weight_gb_per_s"]
    track_decode_weight_gb_per_s.unit = "GB/s"
