"""The CLI: `slmx info`, `slmx generate`, and bad input as one line on stderr with exit code 1."""
import os
import subprocess
import sys

import pytest


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "slmx.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("content", [b"", b"GGUX" + b"\0" * 60, b"GGUF\x03\0\0\0" + b"\xff" * 16])
def test_malformed_file_one_line_exit_1(tmp_path, content):
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    for cmd in (["info", str(p)], ["generate", "-m", str(p), "-p", "hi"]):
        r = run(*cmd)
        assert r.returncode == 1, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("slmx: error:"), r.stderr
        assert "Traceback" not in r.stderr


def test_truncated_real_model(tmp_path, gemma3_path):
    p = tmp_path / "cut.gguf"
    with open(gemma3_path, "rb") as f:
        p.write_bytes(f.read(3_000_000))   # cuts the tokenizer arrays in the metadata
    r = run("info", str(p))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_missing_file():
    r = run("info", "/nonexistent/model.gguf")
    assert r.returncode == 1 and "model" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_info_real_model(gemma3_path):
    r = run("info", gemma3_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for s in ("gemma3", "Q4_K", "Q6_K", "Q8_0", "Q5_0", "262144", "memory to run"):
        assert s in out, s


def test_generate_greedy_streams(gemma3_path):
    r = run("generate", "-m", gemma3_path, "-p", "The capital of France is", "-n", "8",
            "--temperature", "0", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is")
    assert "Paris" in r.stdout or "France" in r.stdout[len("The capital of France is"):]
    assert "tokens/s" in r.stderr


def test_help():
    r = run("--help")
    assert r.returncode == 0 and "generate" in r.stdout
    r = run("generate", "--help")
    assert "--top-p" in r.stdout and "--temperature" in r.stdout


@pytest.mark.parametrize("args, word", [
    (["--top-p", "5"], "top_p"), (["--seed", "-1"], "seed"), (["-n", "-5"], "max-new-tokens"),
    (["--ctx", "100000000"], "context length"), (["--ctx", "0"], "n_ctx"), (["--top-k", "-2"], "top_k"),
    # checked against the loaded model (context, vocabulary): still before the prompt is echoed
    (["--ctx", "1"], "context of 1 tokens"), (["--n-keep", "-1"], "n_keep"),
    (["--logit-bias", "999999999=1"], "token id 999999999"), (["--num-beams", "100000"], "num_beams"),
])
def test_bad_generate_options_one_line_before_any_output(gemma3_path, args, word):
    r = run("generate", "-m", gemma3_path, "-p", "hi", *args)
    assert r.returncode == 1, r
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and word in r.stderr, r.stderr


def test_context_exhaustion_is_reported(gemma3_path):
    r = run("generate", "-m", gemma3_path, "-p", "hi", "-n", "20", "--ctx", "8", "--temperature", "0")
    assert r.returncode == 0 and "finish: context" in r.stderr, r.stderr
    # what --help says of it: stopping is the default, shifting needs the flag
    h = " ".join(run("generate", "--help").stdout.split())
    i = h.index("--context-shift [{rerotate,recompute}] ")
    doc = h[i:h.index(" --prefill-chunk N ", i)]
    assert "without this flag generation stops there (finish: context)" in doc and "(default)" not in doc, doc


def test_closed_pipe_is_quiet(gemma3_path):
    """`slmx generate ... | head -c 1`: the reader leaving early is not an error (no message, exit 0)."""
    p = subprocess.Popen([sys.executable, "-m", "slmx.cli", "generate", "-m", gemma3_path, "-p",
                          "Count from one to one hundred:", "-n", "48", "--threads", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(1)
    p.stdout.close()            # like `head` exiting after the first byte; later tokens hit a closed pipe
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "error" not in err and "Traceback" not in err, err


def test_bench_small_model_and_bad_counts(capsys):
    """bench sizes the KV cache to what the run needs (a 128-context model runs), needs no BOS token,
    and bad counts are one-line errors naming the option."""
    import json
    sys.path.insert(0, os.path.dirname(__file__))
    from hf_tiny import tiny_llama
    from slmx.cli import main
    _, path = tiny_llama()
    assert main(["bench", path, "--n-prompt", "16", "--n-decode", "8", "--repeats", "1", "-t", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_prompt"] == 16 and r["n_decode"] == 8 and r["prefill_tokens_per_s"] > 0
    for args, msg in ((["--n-prompt", "0"], "--n-prompt must be an integer >= 1, got 0"),
                      (["--repeats", "0"], "--repeats must be an integer >= 1, got 0"),
                      (["--n-decode", "-1"], "--n-decode must be an integer >= 0, got -1"),
                      (["--n-prompt", "120", "--n-decode", "9"], "= 129 tokens: the model's context length 128")):
        assert main(["bench", path, "-t", "1", *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("slmx: error: ") and msg in err and err.count("\n") == 1, err


def test_too_many_threads_capped_with_one_line_warning():
    sys.path.insert(0, os.path.dirname(__file__))
    from hf_tiny import tiny_llama
    _, path = tiny_llama()
    r = run("generate", "-m", path, "-p", "hi", "-n", "2", "-t", "1000")
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "threads=1000" in ln]
    assert len(warn) == 1 and warn[0].startswith("slmx: warning: threads=1000 capped to"), r.stderr
    assert "threads: 1000" not in r.stderr


@pytest.mark.parametrize("args, word", [
    (["bench", "-t", "-3"], "-t/--threads"), (["generate", "-p", "hi", "-t", "x"], "-t/--threads"),
    (["generate", "-p", "hi", "--stop", ""], "stop string must not be empty"),
])
def test_bad_flag_values_exit_nonzero_naming_the_flag(args, word):
    r = run(*args)
    assert r.returncode == 2 and r.stdout == "", r
    assert word in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr, r.stderr


def test_train_bad_sample_tokens_before_training(tmp_path, capsys):
    """--sample-tokens < 0 would fail after the whole run: it is refused before anything starts."""
    from slmx.cli import main
    assert main(["train", "--out", str(tmp_path / "o"), "--sample-tokens", "-1", "--max-steps", "1"]) == 1
    out, err = capsys.readouterr()
    assert err == "slmx: error: --sample-tokens must be >= 0 (0: no sample), got -1\n", err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, opt", [
    (["roofline", "--n-prompt", "16"], "--n-prompt"), (["roofline", "--n-decode", "8"], "--n-decode"),
    (["roofline", "--repeats", "2"], "--repeats"), (["no-such-model.gguf", "--quick"], "--quick"),
    (["no-such-model.gguf", "--png", "r.png"], "--png"), (["no-such-model.gguf", "--png", ""], "--png"),
    (["no-such-model.gguf", "--clock", "cpu"], "--clock"),
])
def test_bench_option_of_the_other_mode_is_an_error(args, opt, capsys):
    """an option that does not apply (model options with roofline, roofline options with a model)
    is a one-line error naming it, before anything is measured or loaded"""
    from slmx.cli import main
    assert main(["bench", *args]) == 1
    cap = capsys.readouterr()
    assert cap.err.startswith(f"slmx: error: {opt} applies only to") and cap.err.count("\n") == 1, cap.err
    assert cap.out == ""


def test_bench_roofline_cpu_clock_needs_one_thread(capsys):
    from threadpoolctl import threadpool_limits

    from slmx.cli import main
    assert main(["bench", "roofline", "--quick", "-t", "2", "--clock", "cpu", "--png", ""]) == 1
    cap = capsys.readouterr()
    assert cap.err.startswith("slmx: error: --clock cpu needs 1 thread (-t 1)") and cap.err.count("\n") == 1
    # the request is checked, not the count it resolves to (a lowered OpenMP limit makes -t 2 run 1)
    with threadpool_limits(1, user_api="openmp"):
        assert main(["bench", "roofline", "--quick", "-t", "2", "--clock", "cpu", "--png", ""]) == 1
    cap = capsys.readouterr()
    assert cap.err.startswith("slmx: error: --clock cpu needs 1 thread (-t 1)") and cap.err.count("\n") == 1
    assert cap.out == ""


@pytest.mark.parametrize("args, prog", [
    (["generate", "-p", "hi", "--bogus"], "slmx generate"), (["info", "a.gguf", "extra"], "slmx info"),
    (["perplexity", "--no-such-flag", "3"], "slmx perplexity"),
])
def test_unknown_flag_reported_by_the_subcommand(args, prog, capsys):
    """An unknown flag is reported with the subcommand's usage and name, not the top-level one."""
    from slmx.cli import main
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"usage: {prog} "), err
    assert err.strip().splitlines()[-1].startswith(f"{prog}: error: unrecognized arguments: "), err
    assert args[-1] in err.strip().splitlines()[-1], err


def test_threads_minus_one_is_automatic(capsys):
    """-t -1 means automatic, as threads=-1 in the Python API (and as -t 0); --help says so."""
    sys.path.insert(0, os.path.dirname(__file__))
    from hf_tiny import tiny_llama
    from slmx._kernels.cpu import resolve_threads
    from slmx.cli import main
    _, path = tiny_llama()
    auto = resolve_threads(None)
    for t in ("-1", "0"):
        assert main(["generate", "-m", path, "-p", "hi", "-n", "2", "-t", t, "--no-echo"]) == 0
        err = capsys.readouterr().err
        assert f"| threads: {auto} |" in err, err
    r = run("generate", "--help")
    assert "0 or -1 (the default): automatic" in " ".join(r.stdout.split())


def test_serve_missing_or_unreadable_chat_template(tmp_path, gemma3_path):
    # a one-line error naming the file, before the model is loaded or the port bound
    r = run("serve", "-m", gemma3_path, "--port", "0", "--chat-template", str(tmp_path / "nope.jinja"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.jinja" in lines[0] and "--chat-template" in lines[0], r.stderr
    from slmx.serve.chat import ChatTemplate
    bad = tmp_path / "latin1.jinja"
    bad.write_bytes(b"{{ '\xe9' }}")
    with pytest.raises(ValueError, match="latin1.jinja"):
        ChatTemplate.for_model(None, "gemma3", None, str(bad))
