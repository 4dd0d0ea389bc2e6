"""Concept library figures (issue 3): index speed and size at 100,000 concepts, concurrent adds,
and crash recovery. No model is needed: records and concepts are generated.

    python benchmarks/library_bench.py                 # full run (about a minute on 2 cores)
    python benchmarks/library_bench.py --concepts 20000 --kills 5

Timings are medians of repeated calls. The baseline for the index timings is the same call on a
1,000-concept library measured in the same run, so the ratio shows how lookups scale.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy  # noqa: E402,F401  (imported before forking so children skip the import)
import torch  # noqa: E402,F401

from elite_cli.library import ConceptStore  # noqa: E402
from library_support import child, make_picture, random_concept  # noqa: E402

WORDS = ["cat", "dog", "mug", "lamp", "car", "hat", "shoe", "tree", "rock", "bird", "vase", "toy", "bike", "cup"]


def fill_index(store: ConceptStore, count: int, seed: int = 0) -> list[str]:
    """Insert `count` generated index rows (realistic sizes; no files) and return their names."""
    rng = random.Random(seed)
    model_sets = [{"global_mapper": "sha256:" + secrets.token_hex(32), "local_mapper": "sha256:" + secrets.token_hex(32),
                   "base_model": "CompVis/stable-diffusion-v1-4", "image_encoder": "openai/clip-vit-large-patch14"}
                  for _ in range(3)]
    names = []
    with store._write():
        for index in range(count):
            name = f"{rng.choice(WORDS)}-{index:06d}"
            created = f"2026-{1 + index % 12:02d}-{1 + index % 28:02d}T10:00:00.{index:06d}Z"
            tags = [rng.choice(WORDS) for _ in range(rng.choice([0, 0, 1, 2]))] + (["rare"] if index % 997 == 0 else [])
            metadata = {"concept_id": "sha256:" + secrets.token_hex(32), "name": name, "created": created,
                        "text_width": "768", "grid": "16", "image_sha256": "sha256:" + secrets.token_hex(32),
                        "mask_sha256": "sha256:" + secrets.token_hex(32) if index % 2 else "",
                        "tags": json.dumps(sorted(set(tags))), **model_sets[index % 3]}
            store._insert_row(metadata, "sha256:" + secrets.token_hex(32), ".jpg", ".png" if index % 2 else None,
                              updated=created)
            names.append(name)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return names


def median_ms(call, repeats: int = 30) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def index_figures(root: Path, count: int) -> dict:
    results = {}
    for label, size in (("baseline", 1000), ("large", count)):
        home = root / f"index-{size}"
        store = ConceptStore(home)
        start = time.perf_counter()
        names = fill_index(store, size)
        fill_s = time.perf_counter() - start
        store.close()
        store = ConceptStore(home)  # measure on a freshly opened library, as a CLI call would
        rng = random.Random(1)
        probe = [rng.choice(names) for _ in range(30)]
        ids = [store.get(name).short_id for name in probe[:5]]
        results[label] = {
            "concepts": size,
            "fill_s": fill_s,
            "open_ms": median_ms(lambda: ConceptStore(home).close(), 10),
            "list_first_page_ms": median_ms(lambda: store.list(limit=50)),
            "list_recent_page_ms": median_ms(lambda: store.list(limit=50, sort="recent")),
            "list_tag_page_ms": median_ms(lambda: store.list(tag="cat", limit=50)),
            "list_rare_tag_page_ms": median_ms(lambda: store.list(tag="rare", limit=50)),
            "list_pattern_page_ms": median_ms(lambda: store.list(pattern="lamp-0*", limit=50)),
            "count_ms": median_ms(store.count),
            "suggest_ms": median_ms(lambda: store.suggestions("lamp-00012x"), 3),
            "get_by_name_ms": median_ms(lambda it=iter(probe * 2): store.get(next(it))),
            "get_by_id_prefix_ms": median_ms(lambda it=iter(ids * 10): store.get(next(it))),
            "index_bytes": (home / "library.db").stat().st_size,
        }
        store.close()
    return results


def concurrent_figures(root: Path, processes: int = 8) -> dict:
    context = multiprocessing.get_context("fork")
    home = root / "concurrent"
    go = context.Event()
    workers = [context.Process(target=child, args=("add", str(home), f"p{i}", i), kwargs={"start": go})
               for i in range(processes)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    start = time.perf_counter()
    go.set()
    for worker in workers:
        worker.join()
    parallel_s = time.perf_counter() - start
    store = ConceptStore(home)
    present = store.count()
    clean = store.check().ok
    # Baseline: the same adds, one after another, in this process.
    sequential = ConceptStore(root / "sequential")
    start = time.perf_counter()
    for i in range(processes):
        picture = make_picture(root / f"seq{i}.png", 100 + i)
        sequential.add(random_concept(100 + i), image_path=picture)
    sequential_s = time.perf_counter() - start
    return {"processes": processes, "present": present, "check_clean": clean,
            "exit_codes": [worker.exitcode for worker in workers], "parallel_s": parallel_s,
            "sequential_s": sequential_s}


def sd_concept_figures(root: Path, adds: int = 20) -> dict:
    store = ConceptStore(root / "sd-size")
    times = []
    for i in range(adds):
        picture = make_picture(root / f"sd{i}.png", 500 + i, size=64)
        concept = random_concept(500 + i, width=768, grid=16)
        start = time.perf_counter()
        record = store.add(concept, image_path=picture)
        times.append((time.perf_counter() - start) * 1000)
    load_ms = median_ms(lambda: store.load(record.name), 20)
    return {"file_bytes": record.file_path.stat().st_size, "add_ms": statistics.median(times), "load_ms": load_ms}


def crash_figures(root: Path, kills: int, seed: int = 0) -> dict:
    context = multiprocessing.get_context("fork")
    home = root / "crash"
    ConceptStore(home).close()
    rng = random.Random(seed)
    clean, repaired, failed = 0, 0, 0
    for round_number in range(kills):
        worker = context.Process(target=child, args=("churn", str(home), f"k{round_number}", round_number))
        worker.start()
        time.sleep(0.1 + 0.6 * rng.random())
        os.kill(worker.pid, signal.SIGKILL)
        worker.join()
        store = ConceptStore(home)
        if store.check().ok:
            clean += 1
        elif store.repair().after.ok:
            repaired += 1
        else:
            failed += 1
        store.close()
    return {"kills": kills, "clean": clean, "repaired": repaired, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        figures = {"index": index_figures(root, args.concepts), "concurrent": concurrent_figures(root),
                   "sd_concept": sd_concept_figures(root), "crash": crash_figures(root, args.kills)}
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    base, large = figures["index"]["baseline"], figures["index"]["large"]
    print(f"| operation | {large['concepts']:,} concepts | ratio to 1,000 concepts | target |")
    print("|---|---|---|---|")
    for key, label in [("list_first_page_ms", "list first page (50, by name)"),
                       ("list_recent_page_ms", "list first page (50, newest first)"),
                       ("list_tag_page_ms", "list first page filtered by a common tag (~5% of concepts)"),
                       ("list_rare_tag_page_ms", "list first page filtered by a rare tag (0.1%)"),
                       ("list_pattern_page_ms", "list first page filtered by name glob"),
                       ("get_by_name_ms", "get by name"), ("get_by_id_prefix_ms", "get by id prefix"),
                       ("count_ms", "count"), ("suggest_ms", "closest names for an unknown name (error path)"), ("open_ms", "open library (connect + migration check)")]:
        target = "< 50 ms" if key in ("list_first_page_ms", "get_by_name_ms") else ""
        print(f"| {label} | {large[key]:.2f} ms | {large[key] / base[key]:.2f}x | {target} |")
    size_mb = large["index_bytes"] / 1e6
    print(f"| index file | {size_mb:.1f} MB ({large['index_bytes'] / large['concepts']:.0f} B/concept) | | < 100 MB |")
    concurrent, sd, crash = figures["concurrent"], figures["sd_concept"], figures["crash"]
    print()
    print(f"- {concurrent['processes']} processes adding at once: {concurrent['present']}/{concurrent['processes']} "
          f"present, check clean: {concurrent['check_clean']}, exit codes {concurrent['exit_codes']}; "
          f"{concurrent['parallel_s']:.2f} s in parallel vs {concurrent['sequential_s']:.2f} s for the same adds "
          f"in one process ({concurrent['parallel_s'] / concurrent['sequential_s']:.2f}x, includes fork start-up).")
    print(f"- SD 1.x sized concept (768 wide, 16x16 grid): {sd['file_bytes']:,} bytes on disk "
          f"({sd['file_bytes'] / 1024:.0f} KiB, target < 420 KB); add {sd['add_ms']:.1f} ms, load {sd['load_ms']:.1f} ms.")
    print(f"- SIGKILL at random moments of add/rename/tag/replace/remove: {crash['kills']} kills, check clean after "
          f"{crash['clean']}, repaired completely after {crash['repaired']}, not repaired {crash['failed']}.")


if __name__ == "__main__":
    main()
