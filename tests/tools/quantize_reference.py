"""Record llama.cpp's quantized files for the toy models of tests/kquant_cases.py (MODELS)
-> tests/fixtures/quantize_llamacpp.json.

usage: python tests/tools/quantize_reference.py > tests/fixtures/quantize_llamacpp.json
Needs llama-cpp-python. Writes each model as an F32 GGUF (slmx's writer), runs
llama_model_quantize on it for every case of CASES (llama.cpp file type, --pure or not) and
stores the sha256 of the output file and each tensor's type, plus a hash of the input tensors.
"""
import hashlib
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import kquant_cases  # noqa: E402
import llamacpp_quant  # noqa: E402

# (slmx type name, pure, llama.cpp file type name)
CASES = [("Q4_K_M", False, "Q4_K_M"), ("Q5_K_M", False, "Q5_K_M"), ("Q4_K_S", False, "Q4_K_S"),
         ("Q5_K_S", False, "Q5_K_S"), ("Q4_K", True, "Q4_K_M"), ("Q5_K", True, "Q5_K_M"),
         ("Q6_K", True, "Q6_K"), ("Q8_0", True, "Q8_0"), ("Q4_0", False, "Q4_0"), ("Q5_0", True, "Q5_0"),
         ("F16", True, "F16"), ("BF16", True, "BF16"), ("Q4_1", False, "Q4_1"), ("Q5_1", True, "Q5_1")]


def main():
    import llama_cpp
    from slmx.formats import gguf
    out = {"about": "llama_model_quantize (llama-cpp-python " + llama_cpp.__version__ + ", nthread 2) "
                    "on tests/kquant_cases.py MODELS written as F32 GGUF; made by tests/tools/quantize_reference.py",
           "models": {}}
    with tempfile.TemporaryDirectory() as d:
        for name in kquant_cases.MODELS:
            src = os.path.join(d, name + ".gguf")
            t = kquant_cases.write_model(src, name)
            entry = {"tensors_sha256": kquant_cases.tensors_sha256(t), "cases": {}}
            for typ, pure, ftype in CASES:
                dst = os.path.join(d, "out.gguf")
                key = f"{typ}{' pure' if pure else ''}"
                f = None
                try:
                    llamacpp_quant.model_quantize(src, dst, ftype, pure=pure)
                    f = gguf.read(dst)
                    types = {n: x.type_name for n, x in f.tensors.items()}
                    f.close()
                except (RuntimeError, KeyError) as e:     # e.g. a fallback type slmx does not write
                    entry["cases"][key] = {"error": str(e)}
                    continue
                with open(dst, "rb") as fh:
                    sha = hashlib.sha256(fh.read()).hexdigest()
                entry["cases"][key] = {"file_sha256": sha, "types": types}
            out["models"][name] = entry
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
