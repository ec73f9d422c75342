"""``make bench-scale SIZE=1m``: the whole pipeline on a generated shop, the reference beside it.

One run, on this machine, as ``make run`` would do it (``bin/spark-submit
jobs/pipeline.py``, ``conf/scale.yaml``, tuning off unless ``--tune``):

1. a shop of SIZE reviews is generated under ``data/scale-<size>/raw`` (kept and
   reused while its parameters are the same);
2. the pipeline runs on it from empty tables, while a sampler reads the resident
   memory of the driver's JVM and of the Python processes every half second;
3. on the same train split (``silver/interactions``, read without Spark), the
   references: the ``implicit`` library's ALS at the same rank and iterations
   (Cholesky and CG solvers, 2 threads) and an all-user top-10 with numpy/BLAS
   over its factors, seen items excluded;
4. BENCHMARKS.md gets a section with the command, the machine, the time per
   stage, peak memory, rows per table, and ours / reference ratios.

    python bench/scale.py --size 1m [--tune] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from report_block import write_block  # noqa: E402

from amazon_recs.ingest import shop  # noqa: E402

STAGE_DONE = re.compile(r"stage (\w+): done in ([\d.]+)s")
STAGE_START = re.compile(r"stage (\w+): starting")
LISTS = re.compile(
    r"stage recommend: every user's lists in ([\d.]+)s \(of which ALS scores and top-(\d+): "
    r"([\d.]+)s of worker time over (\d+) workers\)"
)
SEARCH = re.compile(
    r"ALS search: (exact|index of [\d,]+ clusters \(\d+ probed per user\) and a head of [\d,]+ items)"
)
PROBE = re.compile(
    r"ALS search probe: the fewest clusters whose recall at (\d+) reaches ([\d.]+) on ([\d,]+) sampled"
)
RECALL = re.compile(
    r"ALS search recall on ([\d,]+) (?:other )?sampled users: ([\d.]+) at (\d+), ([\d.]+) at (\d+)"
)
CONTENT = re.compile(r"stage train: content model: ([\d,]+) neighbour pairs \((\w[\w ]*)\) in ([\d.]+)s")
TABLE_ROWS = re.compile(r"^  ((?:bronze|silver|gold)/\w+)\s+(\d+|-)\s")
NUM_THREADS = 2


# --- memory of the run's processes ---------------------------------------------


@dataclass
class Peaks:
    """Peak resident memory of the run's processes, by role: the driver's JVM, the
    driver's Python, and PySpark's daemon with its forked workers (summed); and the
    whole tree's proportional set size (PSS), where a page that several processes
    share (the catalogue file the workers map, the daemon's pages its forks have
    not written) counts once, split between them, instead of once per process."""

    samples: int = 0
    stage: str = "start-up"  # the stage running, from the run's own "stage X: starting" lines
    # stage -> [JVM, Python, whole tree, driver's Python, workers, whole tree's PSS] peaks while it ran
    by_stage: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, java: int, driver: int, workers: int, pss: int = 0) -> None:
        sample = (java, driver + workers, java + driver + workers, driver, workers, pss)
        with self.lock:
            peak = self.by_stage.setdefault(self.stage, [0] * len(sample))
            peak[:] = [max(a, b) for a, b in zip(peak, sample, strict=True)]
            self.samples += 1

    def _overall(self, at: int) -> int:
        """The run's peak of one column: every sample belongs to one stage."""
        return max((peak[at] for peak in self.by_stage.values()), default=0)

    java_rss = property(lambda self: self._overall(0))
    python_rss = property(lambda self: self._overall(1))  # the driver's Python and the workers, summed
    tree_rss = property(lambda self: self._overall(2))  # the JVM and every Python process at one sample
    driver_rss = property(lambda self: self._overall(3))
    workers_rss = property(lambda self: self._overall(4))  # PySpark's daemon and workers, summed
    tree_pss = property(lambda self: self._overall(5))  # the memory the run really held at one sample


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss_and_role(pid: int) -> tuple[int, str]:
    """Resident bytes and role ("java", "driver", "workers" or "") of one process."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read()
    except OSError:
        return 0, ""
    rss = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    name = fields.get("Name", "").strip()
    if name == "java":
        return rss, "java"
    if name.startswith("python"):  # the daemon's forks keep its command line
        return rss, "workers" if b"pyspark.daemon" in command else "driver"
    return rss, ""


def _pss(pid: int) -> int:
    """Proportional set size in bytes: each resident page divided by the processes mapping it."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def sample_memory(root_pid: int, peaks: Peaks, stop: threading.Event, every: float = 0.5) -> None:
    while not stop.is_set():
        tree, todo, rss = _children(), [root_pid], {"java": 0, "driver": 0, "workers": 0, "": 0}
        pss = 0
        while todo:
            pid = todo.pop()
            todo.extend(tree.get(pid, []))
            size, role = _rss_and_role(pid)
            rss[role] = max(rss[role], size) if role == "java" else rss[role] + size
            if role:
                pss += _pss(pid)
        peaks.add(rss["java"], rss["driver"], rss["workers"], pss)
        stop.wait(every)


# --- the run ---------------------------------------------------------------------


def ensure_shop(size: str, raw: Path, seed: int) -> tuple[shop.ShopSummary | dict, float]:
    """The shop under ``raw`` (generated unless an identical one is there) and seconds spent."""
    marker = raw / "shop.json"
    wanted = {"size": size, "seed": seed, **shop.SIZES[size]}
    if marker.exists() and json.loads(marker.read_text()).get("wanted") == wanted:
        return json.loads(marker.read_text())["summary"], 0.0
    started = time.perf_counter()
    summary = shop.generate_size(raw, size, seed=seed)
    seconds = time.perf_counter() - started
    described = {k: str(v) if isinstance(v, Path) else v for k, v in summary.__dict__.items()}
    marker.write_text(json.dumps({"wanted": wanted, "summary": described}, indent=1))
    return described, seconds


def folder_settings(data: Path) -> list[str]:
    """The settings that put a run's inputs, tables, models, reports and logs under ``data``."""
    return [
        f"paths.raw={data / 'raw'}",
        f"paths.warehouse={data / 'warehouse'}",
        f"paths.models={data / 'models'}",
        f"paths.reports={data / 'reports'}",
        f"spark.log_dir={data / 'logs'}",
        f"spark.checkpoint_dir={data / 'checkpoints'}",
    ]


def run_pipeline(
    data: Path, summary: dict, tune: bool, extra: list[str], log: Path
) -> tuple[float, list[str], Peaks]:
    overrides = [
        *folder_settings(data),
        f"input.reviews={summary['reviews_glob']}",
        f"input.products={summary['products_glob']}",
        f"tune.enabled={'true' if tune else 'false'}",
        *extra,
    ]
    command = [str(ROOT / "bin" / "spark-submit"), "jobs/pipeline.py", "--config", "conf/scale.yaml"]
    command += [a for o in overrides for a in ("--set", o)]
    peaks, stop, lines = Peaks(), threading.Event(), []
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        sampler = threading.Thread(target=sample_memory, args=(proc.pid, peaks, stop), daemon=True)
        sampler.start()
        for line in proc.stdout:
            if started_stage := STAGE_START.search(line):
                with peaks.lock:
                    peaks.stage = started_stage.group(1)
            sys.stdout.write(line)
            out.write(line)
            lines.append(line.rstrip("\n"))
        code = proc.wait()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - started
    if code:
        raise SystemExit(f"the pipeline failed (exit {code}); its output is in {log}")
    return wall, lines, peaks


# --- the reference -----------------------------------------------------------------


def train_matrix(warehouse: Path) -> tuple[sp.csr_matrix, dict]:
    """The train split as a users x items CSR of weights, read with deltalake (no Spark)."""
    from deltalake import DeltaTable

    table = DeltaTable(str(warehouse / "silver" / "interactions")).to_pyarrow_table(
        columns=["user_idx", "item_idx", "weight", "split"]
    )
    import pyarrow.compute as pc

    train = table.filter(pc.equal(table["split"], "train"))
    users = train["user_idx"].to_numpy()
    items = train["item_idx"].to_numpy()
    weights = train["weight"].to_numpy().astype(np.float32)
    shape = (int(users.max()) + 1, int(items.max()) + 1)
    matrix = sp.csr_matrix((weights, (users, items)), shape=shape)
    return matrix, {"rows": int(len(users)), "users": int(np.unique(users).size), "items": shape[1]}


def implicit_fit(matrix: sp.csr_matrix, rank: int, iterations: int, reg: float, alpha: float, cg: bool):
    from implicit.cpu.als import AlternatingLeastSquares

    confidence = matrix.copy()
    confidence.data = 1.0 + alpha * confidence.data  # MLlib's implicit confidence, as bench/compare.py
    model = AlternatingLeastSquares(
        factors=rank,
        iterations=iterations,
        regularization=reg,
        alpha=1.0,
        use_cg=cg,
        random_state=42,
        num_threads=NUM_THREADS,
    )
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    with threadpool_limits(1, "blas"):  # implicit's own advice: its threads, not BLAS's, do the work
        model.fit(confidence, show_progress=False)
    return model, time.perf_counter() - started


# The numpy top-10 reference scores every user against every item: at 10M (2M users x
# 500k items) that alone is about an hour, so above this many user x item scores it
# runs on the first users only and is scaled up by users (its cost is linear in them).
REFERENCE_MAX_SCORES = 2 * 10**10


def numpy_top_k(user_factors: np.ndarray, item_factors: np.ndarray, seen: sp.csr_matrix, k: int) -> tuple:
    """Seconds for every user's top ``k`` unseen items (blocked products, a mask,
    argpartition), and the users actually timed (the rest extrapolated)."""
    all_users = user_factors.shape[0]
    users = min(all_users, max(1, REFERENCE_MAX_SCORES // max(1, item_factors.shape[0])))
    started = time.perf_counter()
    block = max(1, 16_000_000 // max(1, item_factors.shape[0]))
    items_t = np.ascontiguousarray(item_factors.T)
    for lo in range(0, users, block):
        hi = min(users, lo + block)
        scores = user_factors[lo:hi] @ items_t
        part = seen[lo:hi]
        rows = np.repeat(np.arange(hi - lo), np.diff(part.indptr))
        scores[rows, part.indices] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        np.take_along_axis(top, order, axis=1)
    return (time.perf_counter() - started) * all_users / users, users


# --- the report ----------------------------------------------------------------------


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        "?",
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, {platform.system()} {platform.release()}"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def stage_detail(name: str, content, lists_s: float, fit: float | None, knn_fit: float | None = None) -> str:
    """What the stage's own progress lines say about where its time went."""
    if name == "train" and content:
        knn = f"; item-kNN fit: {knn_fit:.1f}" if knn_fit is not None else ""
        neighbours = f"content neighbours, {content.group(2)}: {float(content.group(3)):.1f}"
        return f" ({neighbours}; ALS fit: {fit:.1f}{knn})"
    if name == "recommend" and lists_s == lists_s:
        return f" (every model's lists in one pass: {lists_s:.1f})"
    return ""


@dataclass
class Progress:
    """What a run's output says about where its time went, as the report reads it.
    A figure whose line is missing is None (the report prints what it has)."""

    stages: list[tuple[str, float]]  # (stage, seconds) in the order they ran
    lists: re.Match | None
    content: re.Match | None
    search: re.Match | None
    recall: re.Match | None
    probe: re.Match | None
    tables: list[tuple[str, str]]  # (table, rows) from the run summary


def read_progress(lines: list[str]) -> Progress:
    """The figures in the output of ``bin/spark-submit jobs/pipeline.py`` (stderr in stdout)."""

    def first(pattern: re.Pattern) -> re.Match | None:
        return next((m for m in map(pattern.search, lines) if m), None)

    return Progress(
        stages=[(m.group(1), float(m.group(2))) for m in map(STAGE_DONE.search, lines) if m],
        lists=first(LISTS),
        content=first(CONTENT),
        search=first(SEARCH),
        recall=first(RECALL),
        probe=first(PROBE),
        tables=[(m.group(1), m.group(2)) for m in map(TABLE_ROWS.match, lines) if m],
    )


def report(args, summary, gen_seconds, wall, lines, peaks, info, reference, config) -> str:
    progress = read_progress(lines)
    stages, lists, content, tables = progress.stages, progress.lists, progress.content, progress.tables
    search, recall, probe = progress.search, progress.recall, progress.probe
    rank, iterations = config.require("als.rank"), config.require("als.max_iter")
    fit = info.get("als_fit_seconds")
    knn_fit = info.get("item_knn_fit_seconds")
    lists_s, als_n, als_worker_s, workers = (
        (float(lists.group(1)), int(lists.group(2)), float(lists.group(3)), int(lists.group(4)))
        if lists
        else (float("nan"), 0, float("nan"), 1)
    )
    als_topk = als_worker_s / workers  # the workers score in parallel, one BLAS thread each
    chol, cg, topk = reference["cholesky_s"], reference["cg_s"], reference["top10_s"]
    tuned = "on" if args.tune else "off"
    out = [
        f"### {args.size} reviews (tuning {tuned})",
        "",
        f"`make bench-scale SIZE={args.size}{' TUNE=1' if args.tune else ''}` "
        f"on {datetime.now(tz=UTC):%Y-%m-%d}, "
        f"commit {git_commit()}; machine: {machine()}. Driver: `conf/scale.yaml` "
        f"({config.require('spark.master')}, spark.driver_memory {config.require('spark.driver_memory')}"
        + "".join(f", {o}" for o in args.overrides if not o.startswith("spark.driver_memory="))
        + ") through `bin/spark-submit`.",
        "",
        f"Shop: {summary['review_lines']:,} review lines by {summary['users']:,} users over "
        f"{summary['items']:,} products (heaviest user {summary['heaviest_user_reviews']:,} reviews), "
        f"{summary['parts']} part files"
        + (f", generated in {gen_seconds:.0f} s" if gen_seconds else " (reused)")
        + ".",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *(
            f"| {name} | {seconds:.1f}{stage_detail(name, content, lists_s, fit, knn_fit)} |"
            for name, seconds in stages
        ),
        f"| **whole run** (wall, JVM start included) | **{wall:.1f}** |",
        "",
        f"Peak memory of the whole process tree (the JVM and the Python processes at the same sample): "
        f"**{gib(peaks.tree_pss)} proportional** (PSS: a page several processes share counts once), "
        f"{gib(peaks.tree_rss)} resident summed per process (RSS). Peak resident memory by role: driver "
        f"JVM {gib(peaks.java_rss)}, Python processes (driver and workers, summed) "
        f"{gib(peaks.python_rss)}; {peaks.samples} samples, every 0.5 s.",
        "",
        f"Of the Python processes: the driver's peaked at {gib(peaks.driver_rss)}, PySpark's daemon and "
        f"workers (summed) at {gib(peaks.workers_rss)}.",
        "",
        "Peaks while each stage ran (resident: JVM / driver's Python / workers / whole tree; "
        "whole tree's PSS): "
        + ", ".join(
            f"{stage} {gib(java)} / {gib(driver)} / {gib(workers)} / {gib(tree)}; {gib(pss)}"
            for stage, (java, _, tree, driver, workers, pss) in peaks.by_stage.items()
        )
        + ".",
        "",
        "Rows per table: " + ", ".join(f"{name} {rows}" for name, rows in tables) + ".",
        "",
        f"Reference on the same train split ({reference['rows']:,} rows, {reference['users']:,} users, "
        f"{reference['items']:,} items), rank {rank}, {iterations} iterations, {NUM_THREADS} threads, "
        "in this run:",
        "",
        "| | ours (s) | reference (s) | ours / reference |",
        "|---|---:|---:|---:|",
        f"| ALS fit vs `implicit` Cholesky | {fit:.1f} | {chol:.1f} | {fit / chol:.1f}x |",
        f"| ALS fit vs `implicit` CG | {fit:.1f} | {cg:.1f} | {fit / cg:.1f}x |",
        f"| ALS all-user top-{als_n} (ours) vs numpy top-10 | {als_topk:.1f} | {topk:.1f} "
        f"| {als_topk / topk:.2g}x |",  # often far below 0.1: one decimal printed 0.0x
        *(
            [
                "",
                f"The numpy top-10 was timed on the first {reference['top10_users']:,} users and scaled "
                f"to all {reference['users']:,} (its cost is linear in users).",
            ]
            if reference.get("top10_users", reference["users"]) < reference["users"]
            else []
        ),
        "",
        f"Our ALS scores and top-{als_n} for every user: {als_worker_s:.1f} s of worker time over "
        f"{workers} workers (one BLAS thread each), {als_topk / fit:.2f}x its fit; the numpy "
        "reference uses 2 BLAS threads in one process. ALS search: "
        + (search.group(1) if search else "?")
        + (
            f", the fewest probed clusters whose recall at {probe.group(1)} reaches {probe.group(2)} on "
            f"{probe.group(3)} sampled users"
            if probe
            else ""
        )
        + (
            f"; its recall against the exact search on {recall.group(1)} {'other ' if probe else ''}"
            "sampled users: "
            f"{recall.group(2)} at {recall.group(3)}, {recall.group(4)} at {recall.group(5)}."
            if recall
            else "."
        ),
    ]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=tuple(shop.SIZES), default="1m")
    parser.add_argument("--tune", action="store_true", help="run with tuning on (the default config's)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    data = ROOT / "data" / f"scale-{args.size}"
    for folder in ("warehouse", "models", "reports", "checkpoints"):
        shutil.rmtree(data / folder, ignore_errors=True)
    summary, gen_seconds = ensure_shop(args.size, data / "raw", args.seed)
    (data / "logs").mkdir(parents=True, exist_ok=True)
    wall, lines, peaks = run_pipeline(
        data, summary, args.tune, args.overrides, data / "logs" / "bench-scale.out"
    )

    version = (data / "models" / "CURRENT").read_text().strip()
    info = json.loads((data / "models" / version / "model_info.json").read_text())
    from amazon_recs.config import load_config

    config = load_config(ROOT / "conf" / "scale.yaml", args.overrides)
    rank, iterations = config.require("als.rank"), config.require("als.max_iter")
    reg, alpha = config.require("als.reg_param"), config.require("als.alpha")
    matrix, shape = train_matrix(data / "warehouse")
    print(f"reference: implicit ALS on {shape['rows']:,} train rows ...", flush=True)
    _, chol = implicit_fit(matrix, rank, iterations, reg, alpha, cg=False)
    model, cg = implicit_fit(matrix, rank, iterations, reg, alpha, cg=True)
    top10, timed = numpy_top_k(np.asarray(model.user_factors), np.asarray(model.item_factors), matrix, 10)
    reference = {**shape, "cholesky_s": chol, "cg_s": cg, "top10_s": top10, "top10_users": timed}
    print(f"reference: cholesky {chol:.1f}s, cg {cg:.1f}s, numpy top-10 {top10:.1f}s", flush=True)

    body = report(args, summary, gen_seconds, wall, lines, peaks, info, reference, config)
    marker = f"scale:{args.size}" + (":tuned" if args.tune else "")
    write_block(args.out, marker, body)
    print(f"\n{body}\n\nwritten to {args.out} (block {marker})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
