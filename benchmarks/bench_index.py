"""Repository indexer benchmark: cold pack, warm re-index after a one-file change, memory.

Regime: the source trees of installed packages (nothing is downloaded), each copied into a
fresh temporary git repository. Every indexer run is a fresh Python process, as in a
pre-commit hook, so the times include interpreter start-up, imports and (when anything must
be tokenized) the V4 tokenizer load:

- cold: empty cache, every file read, scanned, parsed and tokenized;
- warm (no change): everything from the cache;
- warm (one file): one mid-ranked file edited, so one file is re-read and re-tokenized.

Baselines on the same tree: the V4 tokenizer alone (`count_batch` over every file's text,
in this process, load excluded), and repomix / gitingest / aider's repository map when they
are installed (they count with other tokenizers, so their token counts are not V4's).
Prints a table and ends with one JSON line.

    python benchmarks/bench_index.py                 # setuptools (mid) and mypy (large)
    python benchmarks/bench_index.py --package prompt_toolkit --package sympy
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter(); c0 = time.process_time()
from pathlib import Path
from dsv4.agent.indexer import build_index
index = build_index(Path(sys.argv[1]), cache_dir=Path(sys.argv[2]))
elapsed = time.perf_counter() - t0
cpu = time.process_time() - c0
def peak_mb():
    # VmHWM belongs to this process image; ru_maxrss would carry over the parent's peak
    # through fork and exec.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
peak = peak_mb()  # before verifying
exact = None
if sys.argv[3] == "verify":
    from dsv4.engine.tokenizer import get_tokenizer
    exact = get_tokenizer().count(index.text) == index.total_tokens
modes = {}
for f in index.files:
    modes[f.mode] = modes.get(f.mode, 0) + 1
print(json.dumps({
    "wall_s": elapsed, "cpu_s": cpu, "total_tokens": index.total_tokens,
    "budget": index.budget, "files": len(index.files), "modes": modes,
    "files_read": index.stats.files_read, "files_analysed": index.stats.files_analysed,
    "tokens_encoded": index.stats.tokens_encoded, "phases": index.stats.phases,
    "peak_mb": peak, "exact": exact,
}))
"""


def copy_package(name: str, dest: Path) -> Path:
    """The installed package `name` as a committed git repository under `dest`."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"bench_index: package {name!r} is not installed (pip install {name})")
    src = Path(next(iter(spec.submodule_search_locations)))
    root = dest / name
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot"]):
        git = ["git", "-c", "user.email=bench@localhost", "-c", "user.name=bench"]
        subprocess.run([*git, "-C", str(root), *args], check=True)
    return root


def run_indexer(root: Path, cache: Path, verify: bool = False) -> dict:
    mode = "verify" if verify else "-"
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), str(cache), mode],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def edit_one_file(root: Path) -> str:
    """Append a comment to the median-sized tracked Python file; returns its path."""
    files = sorted(root.rglob("*.py"), key=lambda p: (p.stat().st_size, str(p)))
    target = files[len(files) // 2]
    with open(target, "a") as fh:
        fh.write("\n# benchmark edit\n")
    return str(target.relative_to(root))


def tokenizer_baseline(root: Path) -> dict:
    """The V4 tokenizer alone over every text file of the tree (load time excluded)."""
    from dsv4.engine.tokenizer import get_tokenizer

    texts = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and ".git" not in p.parts:
            try:
                texts.append(p.read_text("utf-8"))
            except (UnicodeDecodeError, OSError):
                continue
    tok = get_tokenizer()
    t0 = time.perf_counter()
    n = sum(tok.count_batch(texts))
    return {"tokens": n, "wall_s": time.perf_counter() - t0}


def external_baselines(root: Path) -> dict[str, dict | str]:
    """repomix, gitingest and aider on the same tree, when installed."""
    results: dict[str, dict | str] = {}
    tools = {
        "repomix": ["repomix", "--stdout", "--no-security-check"],
        "gitingest": ["gitingest", str(root), "-o", "-"],
    }
    for name, cmd in tools.items():
        if shutil.which(cmd[0]) is None:
            results[name] = "not installed"
            continue
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        results[name] = {"wall_s": time.perf_counter() - t0, "rc": proc.returncode}
    if importlib.util.find_spec("aider") is None:
        results["aider-repomap"] = "not installed"
    return results


def bench_package(name: str, workdir: Path) -> dict:
    root = copy_package(name, workdir)
    cache = workdir / f"cache-{name}"
    cold = run_indexer(root, cache, verify=True)
    noop = run_indexer(root, cache)
    edited = edit_one_file(root)
    time.sleep(2.1)  # outside the indexer's racy-stat window, as a later commit would be
    one = run_indexer(root, cache, verify=True)
    return {
        "package": name,
        "cold": cold,
        "warm_noop": noop,
        "warm_one_file": one,
        "edited": edited,
        "tokenizer_only": tokenizer_baseline(root),
        "external": external_baselines(root),
    }


def print_table(results: list[dict]) -> None:
    head = (
        f"{'repository':<12} {'run':<14} {'wall s':>7} {'cpu s':>7} {'files':>6} "
        f"{'read':>6} {'enc. tok':>10} {'tok/s':>10} {'files/s':>8} {'peak MB':>8} {'exact':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        for run in ("cold", "warm_noop", "warm_one_file"):
            m = r[run]
            rate = m["tokens_encoded"] / m["wall_s"] if m["tokens_encoded"] else 0
            print(
                f"{r['package']:<12} {run:<14} {m['wall_s']:>7.3f} {m['cpu_s']:>7.3f} "
                f"{m['files']:>6} {m['files_read']:>6} {m['tokens_encoded']:>10,} "
                f"{rate:>10,.0f} {m['files'] / m['wall_s']:>8,.0f} {m['peak_mb']:>8.0f} "
                f"{str(m['exact']):>6}"
            )
        t = r["tokenizer_only"]
        print(
            f"{r['package']:<12} {'V4 tok. only':<14} {t['wall_s']:>7.3f} {'':>7} {'':>6} "
            f"{'':>6} {t['tokens']:>10,} {t['tokens'] / t['wall_s']:>10,.0f}"
        )
        cold = r["cold"]
        print(
            f"{'':<12} packed {cold['total_tokens']:,} of {cold['budget']:,} tokens; "
            f"modes {cold['modes']}; cold/warm-one-file = "
            f"{cold['wall_s'] / r['warm_one_file']['wall_s']:.1f}x"
        )
        for name, ext in r["external"].items():
            shown = ext if isinstance(ext, str) else f"{ext['wall_s']:.3f} s (rc {ext['rc']})"
            print(f"{'':<12} {name}: {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", action="append", help="installed package to index")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repositories")
    args = parser.parse_args()
    packages = args.package or ["setuptools", "mypy"]
    workdir = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        results = [bench_package(name, workdir) for name in packages]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(results)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"bench": "index", "results": results, "max_child_peak_mb": peak}))


if __name__ == "__main__":
    main()
