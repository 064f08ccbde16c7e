"""The asv suite in bench/benchmarks: asv treats every module-level function and method whose name
starts with a benchmark prefix as a benchmark, so a helper named ``time_*`` fails every `asv run`
("call: wrong number of arguments"). Checked on the source (no imports, no timing)."""
import ast
import pathlib

PREFIXES = ("time_", "timeraw_", "track_", "mem_", "peakmem_")
BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench" / "benchmarks"


def _required_positional(fn):
    a = fn.args
    return len(a.posonlyargs) + len(a.args) - len(a.defaults)


def test_module_level_benchmarks_take_no_arguments():
    files = sorted(BENCH.glob("*.py"))
    assert files, BENCH
    bad = []
    for f in files:
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(PREFIXES):
                # a module-level benchmark cannot have params: asv calls it with no arguments
                if _required_positional(node) or node.args.kwonlyargs and \
                        any(d is None for d in node.args.kw_defaults):
                    bad.append(f"{f.name}:{node.lineno} {node.name}")
    assert not bad, f"helpers named like asv benchmarks (rename with a leading underscore): {bad}"


def test_serve_concurrency_imports_are_in_the_bench_extra():
    """bench/serve_concurrency.py's third-party imports install with `pip install 'slmx[bench]'`."""
    import re
    import sys
    import tomllib
    root = BENCH.parent.parent
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"]
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("-", "_") for r in extra}
    mods = set()
    for node in ast.walk(ast.parse((root / "bench" / "serve_concurrency.py").read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            mods.add(node.module.split(".")[0])
    third_party = {m for m in mods if m not in sys.stdlib_module_names and m != "slmx"}
    assert third_party, mods                   # it does use an HTTP client
    assert third_party <= names, f"not in the bench extra: {sorted(third_party - names)}"
