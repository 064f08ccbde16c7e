"""Record llama.cpp's K-quant bytes for tests/kquant_cases.py -> tests/fixtures/kquant_llamacpp.json.

usage: python tests/tools/kquant_reference.py > tests/fixtures/kquant_llamacpp.json
Needs llama-cpp-python (its bundled libggml-base). Calls ggml's public ggml_quantize_chunk with no
importance matrix, which is what llama_model_quantize runs for every tensor of an F32 GGUF, and
stores per case the sha256 of the input and of the quantized bytes for Q4_K, Q5_K and Q6_K.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import kquant_cases  # noqa: E402
import llamacpp_quant  # noqa: E402

TYPES = {"Q4_K": 12, "Q5_K": 13, "Q6_K": 14}


def main():
    import llama_cpp
    out = {"about": "sha256 of ggml_quantize_chunk(type, x, imatrix=NULL) for each case of "
                    "tests/kquant_cases.py; llama-cpp-python " + llama_cpp.__version__
                    + "; made by tests/tools/kquant_reference.py",
           "cases": {}}
    for name, x in kquant_cases.cases().items():
        entry = {"shape": list(x.shape), "input_sha256": kquant_cases.sha256(x)}
        for tname, tid in TYPES.items():
            entry[tname] = kquant_cases.sha256(llamacpp_quant.quantize(x, tid))
        out["cases"][name] = entry
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
