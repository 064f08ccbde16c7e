"""Model files both ways: Hugging Face folders in, GGUF (and HF) out.

    cfg, tensors, tok, weights = load_hf_folder("smollm-135m/")     # config + mmap'd weights + tokenizer
    convert_hf_to_gguf("smollm-135m/", "smollm.gguf", type="F16")   # llama.cpp loads the result
    export_checkpoint("runs/tiny", "tiny.gguf", format="gguf")      # slmx training checkpoint -> GGUF
    export_checkpoint("runs/tiny", "tiny-hf/", format="hf")         # -> config.json + model.safetensors
                                                                     #    + tokenizer.json (transformers loads it)

GGUF output carries the metadata llama.cpp reads for the architecture (hyper-parameters,
``general.file_type``, the tokenizer as ``tokenizer.ggml.*``) and llama.cpp's tensor layout
(Llama/Mistral q/k rows permuted for its RoPE pairing). Weight matrices get ``type`` (F32, F16,
BF16); norms and biases stay F32, as llama.cpp's converter does. Quantized types and recipes
(Q8_0, Q4_K, Q4_K_M, ...) are :func:`slmx.quantize.quantize_model`'s (llama-quantize's rules).
Every file is written atomically.
"""
import math
import os
import tempfile

import numpy as np

from . import qtypes
from .errors import FormatError
from .formats import gguf, hf
from .formats import safetensors as st

__all__ = ["load_hf_folder", "is_hf_folder", "describe_hf", "gguf_model_metadata", "gguf_tensors",
           "convert_hf_to_gguf", "export_checkpoint", "write_gguf", "convert_types", "FLOAT_TYPES"]

# float output types written here (as llama.cpp's convert_hf_to_gguf.py --outtype); llama_ftype
# (general.file_type) of each. Quantized types and recipes go through slmx.quantize.quantize_model
# (llama-quantize's rules, byte-identical tensors).
_FILE_TYPE = {"F32": 0, "F16": 1, "BF16": 32}
FLOAT_TYPES = tuple(_FILE_TYPE)


def convert_types():
    """Every --type convert/export accept: the float types and slmx.quantize's types/recipes."""
    from .quantize import TYPES
    return FLOAT_TYPES + tuple(t for t in TYPES if t not in FLOAT_TYPES)


def _check_type(type):
    key = str(type).upper()
    if key not in convert_types():
        raise ValueError(f"type {type!r}: choose from {', '.join(convert_types())}")
    return key


def is_hf_folder(path):
    """True for a folder holding a HF ``config.json`` and safetensors weights."""
    p = os.fspath(path)
    return (os.path.isfile(os.path.join(p, "config.json"))
            and (os.path.isfile(os.path.join(p, st.SINGLE_NAME))
                 or os.path.isfile(os.path.join(p, st.INDEX_NAME))))


def _hf_tokenizer(folder, cfg):
    from .tokenizer.hf_json import load_json
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        raise FormatError(f"{folder}: no tokenizer.json")
    tok = load_json(path)
    if tok.vocab_size > cfg.vocab_size:
        raise FormatError(f"{path}: {tok.vocab_size} tokens but the model's embedding has "
                          f"{cfg.vocab_size} rows")
    gen = hf.read_json(os.path.join(folder, "generation_config.json"), required=False)
    if gen:
        e = gen.get("eos_token_id")
        ids = e if isinstance(e, list) else [e]
        extra = {int(i) for i in ids if isinstance(i, int) and not isinstance(i, bool)
                 and 0 <= i < tok.vocab_size}
        tok.eos_ids = frozenset(tok.eos_ids | extra)
    return tok


def load_hf_folder(folder, layout="hf"):
    """A HF model folder -> (ModelConfig, GGUF-named tensors, tokenizer, the open weights).

    layout "hf": tensors for slmx's forward, zero-copy views of the mmap'd safetensors;
    layout "gguf": llama.cpp's layout (the config says so too; llama3-style RoPE scaling adds
    llama.cpp's ``rope_freqs.weight``). Keep the returned weights object
    alive as long as the tensors are used (it owns the mmaps). FormatError on anything malformed.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FormatError(f"{folder}: not a folder (a Hugging Face model folder is expected)")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FormatError(f"{folder}: no config.json (not a Hugging Face model folder)")
    d = hf.read_json(os.path.join(folder, "config.json"))
    weights = st.read_folder(folder)
    try:
        cfg = hf.config_from_hf(d, where=os.path.join(folder, "config.json"), tensors=weights.tensors)
        r = hf.tensors_from_hf(cfg, weights.tensors, layout=layout)
        cfg, tensors = r if layout == "gguf" else (cfg, r)
        if layout == "gguf":
            tensors.update(_rope_freqs(cfg))      # llama3-style scaling: llama.cpp's rope_freqs.weight
        tok = _hf_tokenizer(folder, cfg)
    except BaseException:
        weights.close()
        raise
    return cfg, tensors, tok, weights


def describe_hf(folder):
    """Summary of a HF model folder as a JSON-friendly dict: path, architecture, model config
    (slmx's ModelConfig fields), files, tensor count, bytes and parameters by dtype, tokenizer."""
    cfg, tensors, tok, weights = load_hf_folder(folder)
    try:
        by = {}
        for t in weights.tensors.values():
            e = by.setdefault(t.dtype, {"count": 0, "bytes": 0, "elements": 0})
            e["count"] += 1
            e["bytes"] += t.nbytes
            e["elements"] += math.prod(t.shape)
        return {"path": os.fspath(folder), "format": "hf", "architecture": cfg.arch,
                "config": cfg.to_dict(), "files": [os.path.basename(f.path) for f in weights.files],
                "tensor_count": len(weights.tensors), "tensor_bytes": sum(e["bytes"] for e in by.values()),
                "parameter_count": sum(e["elements"] for e in by.values()), "tensors_by_dtype": by,
                "tokenizer": {"model": tok.model, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id,
                              "eos_id": tok.eos_id, "add_bos": tok.add_bos,
                              "has_chat_template": bool(tok.chat_template)}}
    finally:
        weights.close()


# --- GGUF writing ---------------------------------------------------------------------------

def gguf_model_metadata(cfg, name=None, file_type=0):
    """``general.*`` and ``<arch>.*`` GGUF metadata for a ModelConfig in llama.cpp's layout.

    Raises ValueError for configs llama.cpp's architecture cannot express."""
    arch = cfg.arch
    if arch == "mistral":
        arch = "llama"                      # llama.cpp runs Mistral as llama
    if arch in ("llama",) and cfg.rope_neox:
        raise ValueError("gguf_model_metadata: a llama config with rope_neox: permute q/k first "
                         "(slmx.formats.hf.tensors_from_hf(layout='gguf'))")
    if arch in ("qwen2", "gemma3") and not cfg.rope_neox:
        raise ValueError(f"gguf_model_metadata: {arch} uses NeoX RoPE")
    if arch == "gemma3":
        if cfg.sliding_pattern != 6 or (cfg.rope_base_local or 10000.0) != 10000.0:
            raise ValueError("gguf_model_metadata: llama.cpp's gemma3 has 5 sliding layers in 6 and a "
                             "local RoPE base of 10000")
        if not math.isclose(cfg.scale, 1.0 / math.sqrt(cfg.head_dim), rel_tol=1e-6):
            raise ValueError("gguf_model_metadata: llama.cpp's gemma3 scales attention by 1/sqrt(head_dim)")
    elif cfg.attn_scale is not None and not math.isclose(cfg.scale, 1 / math.sqrt(cfg.head_dim), rel_tol=1e-6):
        raise ValueError(f"gguf_model_metadata: {arch} with a custom attention scale")
    a = arch + "."
    m = {
        "general.architecture": arch,
        "general.name": name or arch,
        "general.file_type": gguf.typed(int(file_type), "uint32"),
        a + "context_length": gguf.typed(cfg.context_length, "uint32"),
        a + "embedding_length": gguf.typed(cfg.d_model, "uint32"),
        a + "block_count": gguf.typed(cfg.n_layers, "uint32"),
        a + "feed_forward_length": gguf.typed(cfg.ffn_dim, "uint32"),
        a + "attention.head_count": gguf.typed(cfg.n_heads, "uint32"),
        a + "attention.head_count_kv": gguf.typed(cfg.n_kv_heads, "uint32"),
        a + "attention.key_length": gguf.typed(cfg.head_dim, "uint32"),
        a + "attention.value_length": gguf.typed(cfg.head_dim, "uint32"),
        a + "attention.layer_norm_rms_epsilon": gguf.typed(float(cfg.norm_eps), "float32"),
        a + "rope.freq_base": gguf.typed(float(cfg.rope_base), "float32"),
        a + "rope.dimension_count": gguf.typed(cfg.head_dim, "uint32"),
        a + "vocab_size": gguf.typed(cfg.vocab_size, "uint32"),
    }
    if cfg.rope_freq_scale != 1.0:
        if cfg.rope_scaling is not None:
            raise ValueError("gguf_model_metadata: linear RoPE scaling together with another scaling")
        m[a + "rope.scaling.type"] = "linear"
        m[a + "rope.scaling.factor"] = gguf.typed(1.0 / cfg.rope_freq_scale, "float32")
    sc = cfg.rope_scaling
    if sc is not None and sc["type"] == "yarn":
        # read back by config_from_gguf; llama.cpp's yarn: mscale (1 + 0.1 ln s) x attn_factor
        m[a + "rope.scaling.type"] = "yarn"
        m[a + "rope.scaling.factor"] = gguf.typed(float(sc["factor"]), "float32")
        m[a + "rope.scaling.original_context_length"] = gguf.typed(int(sc["original_context_length"]), "uint32")
        for key, name in (("beta_fast", "yarn_beta_fast"), ("beta_slow", "yarn_beta_slow")):
            if key in sc:
                m[a + "rope.scaling." + name] = gguf.typed(float(sc[key]), "float32")
        if "attention_factor" in sc or "mscale" in sc:
            from .model.rope import rope_frequencies
            _, af = rope_frequencies(sc, cfg.head_dim, cfg.rope_base)
            base = 1.0 + 0.1 * math.log(sc["factor"]) if sc["factor"] > 1 else 1.0
            m[a + "rope.scaling.yarn_attn_factor"] = gguf.typed(float(af) / base, "float32")
    elif sc is not None and sc["type"] not in ("llama3", "freq_factors"):
        raise ValueError(f"gguf_model_metadata: RoPE scaling {sc['type']!r} has no GGUF form slmx writes")
    if cfg.sliding_window and (arch == "gemma3" or cfg.sliding_pattern == -1):
        m[a + "attention.sliding_window"] = gguf.typed(cfg.sliding_window, "uint32")
    if cfg.final_logit_softcap:
        m[a + "final_logit_softcapping"] = gguf.typed(float(cfg.final_logit_softcap), "float32")
    if file_type not in (0, 1, 32):
        m["general.quantization_version"] = gguf.typed(2, "uint32")
    return m


def _f32(t, name):
    return np.ascontiguousarray(hf.to_f32(t, name), dtype=np.float32)


def gguf_tensors(tensors, type="F32", threads=None):
    """GGUF-named tensors -> list of (name, ggml type, shape, data) for :func:`gguf.write`.

    Matrices become ``type`` (F32, F16 or BF16; same-type inputs pass through without a copy);
    vectors stay F32.
    """
    from .ops import quantize
    q = qtypes.qtype(type)
    if q.name not in FLOAT_TYPES:
        raise ValueError(f"gguf_tensors: type {type!r} is not one of {', '.join(FLOAT_TYPES)} "
                         "(quantized types: slmx.quantize.quantize_model)")
    out = []
    for name, t in tensors.items():
        shape = tuple(t.shape)
        if len(shape) == 1 or q.id == qtypes.F32:
            if t.type == qtypes.F32:
                out.append((name, qtypes.F32, shape, np.asarray(t.data)))
            else:
                out.append((name, qtypes.F32, shape, _f32(t, name)))
            continue
        tq = q if shape[-1] % q.block_size == 0 else qtypes.qtype("F16")
        if t.type == tq.id:
            out.append((name, tq.id, shape, np.asarray(t.data)))
            continue
        blocks = quantize(_f32(t, name), tq.name, threads=threads)
        out.append((name, tq.id, shape, blocks))
    return out


def write_gguf(path, cfg, tensors, tokenizer, type="F32", name=None, threads=None, report=None):
    """Write a GGUF model file atomically: metadata for ``cfg`` (llama.cpp's layout), the
    tokenizer, the tensors at ``type`` (F32/F16/BF16, or a quantized type / recipe of
    slmx.quantize: an F32 file is written next to ``path`` first, then quantized into it and
    removed). Returns the file size. report: a dict that gets "fallbacks" ({"Q4_K -> Q5_0": n}:
    tensors whose rows do not fit the type's blocks, as slmx.quantize.quantize_model reports)."""
    from .tokenizer.gguf_meta import gguf_metadata
    key = _check_type(type)
    if key not in FLOAT_TYPES:
        from .quantize import quantize_model
        d = os.path.dirname(os.path.abspath(os.fspath(path)))
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(os.fspath(path)) + ".", suffix=".f32.tmp", dir=d)
        os.close(fd)
        try:
            write_gguf(tmp, cfg, tensors, tokenizer, "F32", name=name)
            r = quantize_model(tmp, path, key, threads=threads)
            if report is not None:
                report["fallbacks"] = r.get("fallbacks", {})
            return r["bytes"]
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    meta = gguf_model_metadata(cfg, name=name, file_type=_FILE_TYPE[key])
    meta.update(gguf_metadata(tokenizer, vocab_size=cfg.vocab_size))
    if "rope_freqs.weight" not in tensors:
        tensors = dict(tensors, **_rope_freqs(cfg))
    return gguf.write(path, meta, gguf_tensors(tensors, key, threads=threads))


def _rope_freqs(cfg):
    """{"rope_freqs.weight": per-dimension frequency divisors} for the scalings llama.cpp reads
    from that tensor (llama3, explicit factors; llama architecture only), else {}."""
    sc = cfg.rope_scaling
    if sc is None or sc["type"] not in ("llama3", "freq_factors"):
        return {}
    if cfg.arch not in ("llama", "mistral"):
        raise ValueError(f"gguf: RoPE scaling {sc['type']!r} on {cfg.arch}: llama.cpp reads rope_freqs.weight "
                         "for llama only")
    from .model.rope import kernel_parameters
    _, fs, ff, af = kernel_parameters(sc, cfg.head_dim, cfg.rope_base)
    if fs != 1.0 or af != 1.0 or ff is None:
        raise ValueError(f"gguf: RoPE scaling {sc['type']!r} is not a pure set of frequency divisors")
    return {"rope_freqs.weight": hf.ArrayTensor("rope_freqs.weight", qtypes.F32, np.ascontiguousarray(ff, np.float32))}


def convert_hf_to_gguf(in_dir, out_path, type="F32", name=None, threads=None):
    """A HF model folder -> a GGUF file llama.cpp and slmx load. Returns a summary dict.

    type: F32, F16, BF16 (matrices; norms stay F32), or any type / recipe of
    :func:`slmx.quantize.quantize_model` (Q8_0, Q4_K_M, ...), which reads the folder itself."""
    key = _check_type(type)
    if key not in FLOAT_TYPES:
        from .quantize import quantize_model
        r = quantize_model(in_dir, out_path, key, threads=threads)
        with gguf.read(out_path) as f:
            arch = f.metadata.get("general.architecture")
        return {"path": os.fspath(out_path), "arch": arch, "type": key, "tensors": r["n_tensors"],
                "bytes": r["bytes"]}
    cfg, tensors, tok, weights = load_hf_folder(in_dir, layout="gguf")
    if cfg.arch == "mistral" and cfg.sliding_window:
        import warnings
        warnings.warn(f"{in_dir}: Mistral's sliding window ({cfg.sliding_window}) is written as "
                      "llama.attention.sliding_window; slmx honours it, llama.cpp's llama architecture "
                      "does not (its output differs beyond the window)")
    try:
        size = write_gguf(out_path, cfg, tensors, tok, type=key,
                          name=name or os.path.basename(os.path.abspath(in_dir)), threads=threads)
    finally:
        weights.close()
    return {"path": os.fspath(out_path), "arch": cfg.arch, "type": key,
            "tensors": len(tensors), "bytes": size}


# --- slmx training checkpoints --------------------------------------------------------------

def _checkpoint(ckpt_dir):
    from .model.config import ModelConfig
    from .train.checkpoint import load_checkpoint
    from .train.trainer import load_tokenizer
    c = load_checkpoint(ckpt_dir, optimizer=False)
    mc = c.state.get("model_config")
    if not mc:
        raise FormatError(f"{c.path}: state.json has no model_config")
    cfg = ModelConfig(**mc)
    if not c.tokenizer_path or not os.path.isfile(c.tokenizer_path):
        raise FormatError(f"{c.path}: the checkpoint has no tokenizer.json")
    tok = load_tokenizer(c.tokenizer_path)
    tensors = {k: hf.ArrayTensor(k, qtypes.F32, np.ascontiguousarray(v, np.float32))
               for k, v in c.tensors.items()}
    return c, cfg, tok, tensors


def _write_safetensors_atomic(path, arrays, metadata=None):
    from safetensors.numpy import save_file
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~gguf._umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_json_atomic(path, obj):
    import json
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~gguf._umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_hf_folder(out_dir, cfg, tensors, tokenizer):
    """config.json + generation_config.json + model.safetensors (F32) + tokenizer.json and
    tokenizer_config.json into OUT_DIR (created), each written atomically."""
    from .tokenizer.hf_json import save_json
    os.makedirs(out_dir, exist_ok=True)
    arrays = hf.tensors_to_hf(cfg, {k: (t if isinstance(t, np.ndarray) else hf.to_f32(t, k))
                                    for k, t in tensors.items()})
    _write_safetensors_atomic(os.path.join(out_dir, st.SINGLE_NAME), arrays, {"format": "pt"})
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    _write_json_atomic(os.path.join(out_dir, "config.json"), hf.config_to_hf(cfg, bos, eos))
    gen = {"bos_token_id": bos, "eos_token_id": eos}
    _write_json_atomic(os.path.join(out_dir, "generation_config.json"),
                       {k: v for k, v in gen.items() if v is not None})
    save_json(tokenizer, os.path.join(out_dir, "tokenizer.json"), write_config=True)
    return out_dir


def export_checkpoint(ckpt_dir, out, format="gguf", type="F32", threads=None):
    """An slmx training checkpoint (a ckpt-* folder or a training output folder) -> a GGUF file
    (``format="gguf"``, weights at ``type``) or a HF folder (``format="hf"``, F32). Returns a
    summary dict."""
    if format not in ("gguf", "hf"):
        raise ValueError(f"format must be 'gguf' or 'hf', got {format!r}")
    _check_type(type)
    if format == "hf" and _check_type(type) != "F32":
        raise ValueError("--format hf writes F32 weights (no --type)")
    c, cfg, tok, tensors = _checkpoint(ckpt_dir)
    # multi-token-prediction heads (mtp.*) have no place in llama.cpp's or transformers' layout
    # (llama.cpp refuses a file with tensors it does not know): they are left out, and said so
    mtp = sorted({k.split(".")[1] for k in tensors if k.startswith("mtp.")})
    tensors = {k: v for k, v in tensors.items() if not k.startswith("mtp.")}
    if format == "gguf":
        report = {}
        size = write_gguf(out, cfg, tensors, tok, type=type, name=f"slmx-{os.path.basename(c.path)}",
                          threads=threads, report=report)
        return {"path": os.fspath(out), "format": "gguf", "type": _check_type(type),
                "step": c.step, "bytes": size, "mtp_heads_dropped": len(mtp),
                "fallbacks": report.get("fallbacks", {})}
    write_hf_folder(out, cfg, tensors, tok)
    return {"path": os.fspath(out), "format": "hf", "step": c.step, "mtp_heads_dropped": len(mtp)}
