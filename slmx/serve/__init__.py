"""HTTP serving: an OpenAI-compatible server over a continuous-batching engine."""
