"""Repository indexer benchmark: cold pack, re-index after edits, CPU time and memory.

Regime: the source trees of installed packages (nothing is downloaded), each copied into a
fresh temporary git repository. Every indexer run is a fresh Python process, as in a
pre-commit hook, so the times include interpreter start-up, imports and whatever tokenizer
the run needs:

- first run: an empty cache folder, as on a machine that never indexed anything: every file
  read, scanned, parsed, and as much counted as the budget needs (the whole tree when it
  fits, else about a budget's worth); the token counter's tables are built (~0.5 s, once
  per tokenizer file);
- cold: the same with the index cache removed but the counter's tables kept (every later
  cold index on the machine);
- warm, no change: everything from the cache;
- one-file edit: a mid-sized file packed in full is edited before each run.

Wall times include process start (measured around the child); CPU is the child's user +
system time (all its threads, and its subprocesses: git and the background token counter).
Peak memory is the indexer process's high-water mark + that of its largest subprocess.
Each scenario runs `--repeat` times; the table shows medians. On a shared machine wall
time swings with the load, CPU time much less: both are printed, with the load average,
and "others", the most CPU time other processes took during any one run. `--quiet` starts
each run only when the machine is idle, and runs it again (up to 6 times) while other
processes took 0.1 s of CPU or more during it (wall times then mean something on a shared
box).

Baselines on the same tree: the V4 tokenizer alone (load, then `count_batch` over every
text file), and other packers when installed: repomix and gitingest (on PATH, or given
with `--tool NAME=COMMAND`, `{root}` standing for the tree), one run each. They count with
OpenAI tokenizers, so their token counts are not V4's; gitingest fetches its tokenizer
table from the network on first use and, where it cannot, packs without counting. aider's
repository map (`--aider-python`, an interpreter with aider installed) runs cold, then
after a one-file edit with its tags cache kept, each in a fresh process. Prints a table,
then one JSON line.

    python benchmarks/bench_index.py     # setuptools (0.7 M tokens), + rich (1.1 M), mypy (2.1 M)
    python benchmarks/bench_index.py --package black --repeat 5
    python benchmarks/bench_index.py --tool repomix="repomix --stdout -q {root}"
    python benchmarks/bench_index.py --aider-python ~/venvs/aider/bin/python
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from pathlib import Path
from dsv4.agent.indexer import build_index
index = build_index(Path(sys.argv[1]), cache_dir=Path(sys.argv[2]))
elapsed = time.perf_counter() - t0
# CPU of this process (all threads, start-up included) and of its git subprocesses, taken
# before the verification below.
cpu = sum(
    u.ru_utime + u.ru_stime
    for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
)
# VmHWM belongs to this process image (ru_maxrss would carry the parent's peak over exec).
peak = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l[:6] == "VmHWM:")
# The largest of its finished subprocesses (git, the background token counter).
sub_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
exact = None
t1 = time.perf_counter()
if sys.argv[3] == "verify":
    from dsv4.engine.tokenizer import get_tokenizer
    exact = get_tokenizer().count(index.text) == index.total_tokens
verify_s = time.perf_counter() - t1
modes = {}
for f in index.files:
    modes[f.mode] = modes.get(f.mode, 0) + 1
full = sorted(f.path for f in index.files if f.mode == "full")
print(json.dumps({
    "in_process_s": elapsed, "total_tokens": index.total_tokens, "budget": index.budget,
    "files": len(index.files), "modes": modes, "files_read": index.stats.files_read,
    "files_analysed": index.stats.files_analysed, "tokens_encoded": index.stats.tokens_encoded,
    "phases": index.stats.phases, "peak_mb": peak, "exact": exact, "full_paths": full,
    "cpu_s": cpu, "verify_s": verify_s, "sub_peak_mb": sub_peak,
}))
"""
_DEFAULT_TOOLS = {
    "repomix": "repomix --stdout --quiet {root}",  # with its secret check, as the indexer's
    "gitingest": "gitingest {root} -o -",
}
# aider's repository map, run by an interpreter where aider is installed (`--aider-python`):
# the map over every file of the tree, as aider builds it with no file in the chat. aider's
# models count tokens with tiktoken, whose table cannot be fetched on a closed network, so
# the map's token sizing runs on a 4-characters-a-token estimate instead.
_AIDER = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from aider.io import InputOutput
from aider.repomap import RepoMap

class CharsPerToken:
    def token_count(self, text):
        return len(text) // 4

root = Path(sys.argv[1])
files = sorted(str(p) for p in root.rglob("*")
               if p.is_file() and not any(part.startswith((".git", ".aider")) for part in p.parts))
io = InputOutput(pretty=False, yes=True, fancy_input=False)
repo_map = RepoMap(root=str(root), main_model=CharsPerToken(), io=io)
text = repo_map.get_repo_map([], files) or ""
print(json.dumps({"s": time.perf_counter() - t0, "chars": len(text)}))
"""
_RUNS = ("first_run", "cold", "warm_noop", "edit")


def copy_package(name: str, dest: Path) -> Path:
    """The installed package `name` as a committed git repository under `dest`; `a+b` puts
    the packages a and b side by side in one repository (to make a tree of a chosen size)."""
    parts = name.split("+")
    root = dest / name
    for part in parts:
        spec = importlib.util.find_spec(part)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"bench_index: package {part!r} is not installed (pip install {part})")
        src = Path(next(iter(spec.submodule_search_locations)))
        target = root / part if len(parts) > 1 else root
        ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
        shutil.copytree(src, target, ignore=ignore)
    git = ["git", "-c", "user.email=bench@localhost", "-c", "user.name=bench", "-C", str(root)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot"]):
        subprocess.run([*git, *args], check=True)
    return root


def timed_child(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout) of one child process, CPU from the children's rusage."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, cpu, proc.stdout


def run_indexer(
    root: Path, cache: Path, verify: bool, prepare: Callable[[], None] = lambda: None
) -> dict:
    """One fresh-process run; its verification (an exact recount) is left out of the times.
    With `--quiet`, it starts only once the machine is idle; `other_cpu_s` is the CPU time
    other processes took meanwhile (0 on a machine of its own)."""
    mode = "verify" if verify else "-"
    best: dict | None = None
    for _ in range(_QUIET_TRIES if QUIET else 1):
        if QUIET:
            wait_until_idle()
        prepare()  # the scenario's starting state, again before each retry
        busy_before = machine_busy_s()
        wall, cpu, out = timed_child([sys.executable, "-c", _CHILD, str(root), str(cache), mode])
        result = json.loads(out.strip().splitlines()[-1])
        result["other_cpu_s"] = max(0.0, machine_busy_s() - busy_before - cpu)
        result["wall_s"] = wall - result.pop("verify_s")
        if best is None or result["other_cpu_s"] < best["other_cpu_s"]:
            best = result
        if best["other_cpu_s"] < _QUIET_OTHERS_S:
            break
    assert best is not None
    return best


QUIET = False  # set by --quiet
_QUIET_TRIES = 6
_QUIET_OTHERS_S = 0.1  # a run during which others took less CPU than this counts as quiet


def machine_busy_s() -> float:
    """CPU seconds all processes have used since boot (Linux /proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(limit_s: float = 120.0) -> None:
    """Wait (at most `limit_s`) for half a second in which the machine does next to nothing."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = machine_busy_s()
        time.sleep(0.5)
        if machine_busy_s() - before < 0.03:
            return


def edit(path: Path, n: int) -> None:
    """Append a line, then date the file back out of the indexer's racy-stat window."""
    with open(path, "a") as fh:
        fh.write(f"\n# benchmark edit {n}\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))


def scenario_runs(root: Path, cache: Path, repeat: int) -> dict[str, list[dict]]:
    """Each scenario `repeat` times; the first cold and edit runs are verified."""
    runs: dict[str, list[dict]] = {name: [] for name in _RUNS}

    def empty_cache() -> None:
        shutil.rmtree(cache, ignore_errors=True)

    def drop_index() -> None:
        for index_file in cache.glob("*.cache"):
            index_file.unlink()  # the counter's tables (*.marshal) stay

    for i in range(repeat):
        runs["first_run"].append(run_indexer(root, cache, False, empty_cache))
        runs["cold"].append(run_indexer(root, cache, i == 0, drop_index))
        runs["warm_noop"].append(run_indexer(root, cache, verify=False))
    full = runs["cold"][0]["full_paths"]
    target = root / sorted(full, key=lambda p: ((root / p).stat().st_size, p))[len(full) // 2]
    edits = iter(range(1_000_000))
    for i in range(repeat):
        runs["edit"].append(run_indexer(root, cache, i == 0, lambda: edit(target, next(edits))))
    runs["edited"] = [{"path": str(target.relative_to(root))}]
    return runs


def median_run(runs: list[dict]) -> dict:
    """The run with the median CPU time, its wall and CPU replaced by the medians."""
    ordered = sorted(runs, key=lambda r: r["cpu_s"])
    pick = dict(ordered[len(ordered) // 2])
    pick["wall_s"] = statistics.median(r["wall_s"] for r in runs)
    pick["cpu_s"] = statistics.median(r["cpu_s"] for r in runs)
    pick["other_cpu_s"] = max(r["other_cpu_s"] for r in runs)
    pick["exact"] = next((r["exact"] for r in runs if r["exact"] is not None), None)
    pick.pop("full_paths", None)
    return pick


def tokenizer_baseline(root: Path) -> dict:
    """The V4 tokenizer alone over every text file of the tree: load and count."""
    code = (
        "import sys, time\nfrom pathlib import Path\nt=time.perf_counter()\n"
        "from dsv4.engine.tokenizer import get_tokenizer\ntok = get_tokenizer()\n"
        "load = time.perf_counter() - t\ntexts = []\n"
        "for p in sorted(Path(sys.argv[1]).rglob('*')):\n"
        "    if p.is_file() and '.git' not in p.parts:\n"
        "        try: texts.append(p.read_text('utf-8'))\n"
        "        except (UnicodeDecodeError, OSError): pass\n"
        "t = time.perf_counter(); n = sum(tok.count_batch(texts))\n"
        "print(n, load, time.perf_counter() - t)\n"
    )
    wall, cpu, out = timed_child([sys.executable, "-c", code, str(root)])
    tokens, load, count = out.split()
    return {"tokens": int(tokens), "load_s": float(load), "count_s": float(count), "cpu_s": cpu}


def external_baselines(root: Path, tools: dict[str, str]) -> dict[str, dict | str]:
    """Other packers on the same tree: wall and CPU of one run each, when installed."""
    results: dict[str, dict | str] = {}
    for name, template in tools.items():
        cmd = [part.replace("{root}", str(root)) for part in shlex.split(template)]
        if shutil.which(cmd[0]) is None:
            results[name] = "not installed"
            continue
        try:
            wall, cpu, out = timed_child(cmd, cwd=root)
        except RuntimeError as exc:
            results[name] = f"failed: {exc}"[:300]
            continue
        results[name] = {"wall_s": wall, "cpu_s": cpu, "output_chars": len(out)}
    return results


def aider_python(given: str | None) -> str | None:
    """An interpreter that can import aider: `given`, this one, or the one behind an
    `aider` command on PATH (its script's first line); None when there is none."""
    if given:
        return given
    if importlib.util.find_spec("aider") is not None:
        return sys.executable
    script = shutil.which("aider")
    if script is None:
        return None
    with open(script, "rb") as fh:
        first = fh.readline().decode("utf-8", "replace").strip()
    return first[2:].strip() if first.startswith("#!") and "python" in first else None


def aider_baseline(root: Path, python: str | None, target: Path) -> dict | str:
    """aider's repository map of the tree in fresh processes: cold (no tags cache), then
    after appending to `target` (its tags cache kept)."""
    if python is None:
        return "not installed"
    for cache in root.glob(".aider.tags.cache*"):
        shutil.rmtree(cache, ignore_errors=True)
    try:
        # -I: run in the tree (aider keeps its tags cache there) without importing from it
        # (a tree such as setuptools' holds modules named like the standard library's).
        cmd = [python, "-I", "-c", _AIDER, str(root)]
        cold_wall, cold_cpu, out = timed_child(cmd, cwd=root)
        edit(target, -1)
        edit_wall, edit_cpu, _ = timed_child(cmd, cwd=root)
    except RuntimeError as exc:
        return f"failed: {exc}"[:300]
    chars = json.loads(out.strip().splitlines()[-1])["chars"]
    return {"wall_s": cold_wall, "cpu_s": cold_cpu, "edit_wall_s": edit_wall,
            "edit_cpu_s": edit_cpu, "output_chars": chars}  # fmt: skip


def bench_package(
    name: str, workdir: Path, repeat: int, tools: dict[str, str], aider: str | None
) -> dict:
    root = copy_package(name, workdir)
    runs = scenario_runs(root, workdir / f"cache-{name}", repeat)
    result: dict = {"package": name, "edited": runs.pop("edited")[0]["path"]}
    result.update({run: median_run(runs[run]) for run in _RUNS})
    result["tokenizer_only"] = tokenizer_baseline(root)
    result["external"] = external_baselines(root, tools)
    result["external"]["aider-repomap"] = aider_baseline(root, aider, root / result["edited"])
    return result


def print_table(results: list[dict]) -> None:
    head = (
        f"{'repository':<15} {'run':<13} {'wall s':>7} {'CPU s':>6} {'files':>6} {'read':>5} "
        f"{'counted tok':>11} {'tok/CPU-s':>10} {'files/s':>8} {'peak MB':>9} {'exact':>6} "
        f"{'others':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        for run in _RUNS:
            m = r[run]
            rate = m["tokens_encoded"] / m["cpu_s"] if m["tokens_encoded"] else 0
            print(
                f"{r['package']:<15} {run:<13} {m['wall_s']:>7.3f} {m['cpu_s']:>6.2f} "
                f"{m['files']:>6} {m['files_read']:>5} {m['tokens_encoded']:>11,} "
                f"{rate:>10,.0f} {m['files'] / m['wall_s']:>8,.0f} "
                f"{m['peak_mb']:>4.0f}+{m['sub_peak_mb']:<4.0f} "
                f"{str(m['exact']):>6} {m['other_cpu_s']:>6.2f}"
            )
        t = r["tokenizer_only"]
        print(
            f"{r['package']:<15} {'V4 tok. only':<13} {t['load_s'] + t['count_s']:>7.3f} "
            f"{t['cpu_s']:>6.2f} {'':>6} {'':>5} {t['tokens']:>11,} "
            f"{t['tokens'] / t['count_s']:>10,.0f}  (load {t['load_s']:.2f} s; rate per wall s)"
        )
        cold = r["cold"]
        print(
            f"{'':<15} packed {cold['total_tokens']:,} of {cold['budget']:,} tokens; "
            f"modes {cold['modes']}; edited {r['edited']}"
        )
        for name, ext in r["external"].items():
            shown = (
                ext
                if isinstance(ext, str)
                else (
                    f"{ext['wall_s']:.3f} s wall, {ext['cpu_s']:.2f} s CPU, "
                    f"{ext['output_chars']:,} chars"
                )
            )
            if isinstance(ext, dict) and "edit_wall_s" in ext:
                shown += (
                    f"; after a one-file edit {ext['edit_wall_s']:.3f} s wall, "
                    f"{ext['edit_cpu_s']:.2f} s CPU"
                )
            print(f"{'':<15} {name}: {shown}")


def parse_tools(specs: list[str] | None) -> dict[str, str]:
    tools = dict(_DEFAULT_TOOLS)
    for spec in specs or []:
        name, sep, command = spec.partition("=")
        if not sep or not command:
            raise SystemExit(f"bench_index: --tool expects NAME=COMMAND, got {spec!r}")
        tools[name] = command
    return tools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", action="append", help="installed package to index")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (median)")
    parser.add_argument("--tool", action="append", help="NAME=COMMAND of another packer")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repositories")
    parser.add_argument(
        "--aider-python",
        help="interpreter with aider installed, for its repository map (default: this one, "
        "or the one behind an `aider` command on PATH)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="on a shared machine: start each indexer run only when the machine is idle",
    )
    args = parser.parse_args()
    global QUIET
    QUIET = args.quiet
    if args.repeat < 1:
        raise SystemExit(f"bench_index: --repeat must be at least 1, got {args.repeat}")
    packages = args.package or ["setuptools", "setuptools+rich", "mypy"]
    tools = parse_tools(args.tool)
    workdir = Path(tempfile.mkdtemp(prefix="bench-index-"))
    load_before = os.getloadavg()
    try:
        aider = aider_python(args.aider_python)
        results = [bench_package(name, workdir, args.repeat, tools, aider) for name in packages]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    print_table(results)
    load = f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    print(f"{load}; cpus {os.cpu_count()}")
    print(json.dumps({"bench": "index", "results": results, "load": [load_before, load_after]}))


if __name__ == "__main__":
    main()
