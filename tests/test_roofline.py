"""Machine ceilings (slmx._kernels.peak) and the roofline report (slmx.roofline)."""
import numpy as np
import pytest

from slmx._kernels import peak


def test_peak_rates(simd_level):
    fp32 = peak.peak("fp32", 1, iters=20000)
    assert fp32 > 0.1                      # GFLOP/s: any CPU does more than 0.1
    for kind in ("bf16", "int8", "amx_bf16", "amx_int8"):
        r = peak.peak(kind, 1, iters=20000)
        assert (r is None) == (not peak.available(kind))
        if r is not None:
            assert r > fp32 / 4            # the wide dot products do more work per instruction
    assert peak.peak("fp32", 2, iters=20000) > 0.1
    with pytest.raises(ValueError, match="kind"):
        peak.peak("fp64")


def test_read_bandwidth(simd_level):
    buf = np.ones(1 << 22, np.uint8)
    assert peak.read_bandwidth(buf, 1, repeats=2) > 0.1
    assert peak.read_bandwidth(buf, 2, repeats=2) > 0.1
    with pytest.raises(ValueError, match="4096"):
        peak.read_bandwidth(np.ones(100, np.uint8))


def test_roof_and_report():
    from slmx import roofline
    ceilings = {"threads": 2, "bandwidth": 20.0, "bandwidth_cache": 40.0, "fp32": 400.0, "int8": 1600.0,
                "amx_int8": 12000.0}
    # GEMV at 0.5 flop/B: memory roof 10 GFLOP/s; GEMM at 100 flop/B: the fp32 peak
    gemv = {"name": "fp32 GEMV", "kind": "fp32", "flops": 1e9, "bytes": 2e9, "seconds": 0.2}
    gemm = {"name": "fp32 GEMM", "kind": "fp32", "flops": 1e11, "bytes": 1e9, "seconds": 0.5}
    qgemv = {"name": "Q8_0 GEMV", "kind": "int8", "flops": 1e12, "bytes": 1e9, "seconds": 1.0}
    assert roofline._roof(gemv, ceilings) == (10.0, "memory", "fp32")
    assert roofline._roof(gemm, ceilings) == (400.0, "compute", "fp32")
    assert roofline._roof(qgemv, ceilings) == (1600.0, "compute", "int8")   # M = 1: no AMX roof
    assert roofline._roof(dict(gemv, bandwidth=40.0), ceilings) == (20.0, "memory", "fp32")  # cache-resident
    text = "\n".join(roofline.report(ceilings, [gemv, gemm]))
    assert "50%" in text and "memory read 20.0 GB/s" in text      # 5 of 10; 200 of 400
    with pytest.raises(ValueError, match="dtype"):
        roofline.peak_flops("fp8")


def test_cli_bench_roofline_quick(tmp_path):
    import subprocess
    import sys
    png = tmp_path / "roof.png"
    r = subprocess.run([sys.executable, "-m", "slmx.cli", "bench", "roofline", "--quick", "-t", "2",
                        "--png", str(png)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "peak fp32 FMA" in r.stdout and "% roof" in r.stdout
    for name in ("fp32 GEMM", "bf16 GEMM", "Q4_K GEMV", "Q6_K GEMV", "attention"):
        assert name in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_roofline_without_matplotlib(tmp_path, monkeypatch, capsys):
    """No matplotlib: the default run prints the table and a note; an explicit --png is a one-line error."""
    import sys
    from slmx import cli, roofline
    ceilings = {"threads": 1, "bandwidth": 20.0, "bandwidth_cache": 40.0, "fp32": 400.0}
    gemv = {"name": "fp32 GEMV", "kind": "fp32", "flops": 1e9, "bytes": 2e9, "seconds": 0.2}
    monkeypatch.setattr(roofline, "measure_ceilings", lambda threads, quick: ceilings)
    monkeypatch.setattr(roofline, "measure_kernels", lambda threads, quick: [gemv])
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib -> ImportError
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "roofline", "--quick", "-t", "1"]) in (0, None)
    out = capsys.readouterr().out
    assert "fp32 GEMV" in out and "roofline plot skipped" in out and "matplotlib" in out
    assert not (tmp_path / "roofline.png").exists()
    assert cli.main(["bench", "roofline", "--quick", "-t", "1", "--png", str(tmp_path / "r.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("slmx: error: --png") and "matplotlib" in err and err.count("\n") == 1
