"""The concept library: `ConceptStore` over `$ELITE_HOME` (format: library/FORMAT.md).

Importing this package does not import torch; only loading, adding and exporting concepts do.

    store = ConceptStore(home=None)                      # creates/migrates <home>/library.db
    store.add(concept, image_path=, mask_path=None, name=None, tags=(), replace=False,
              keep_sources=True) -> StoredConcept        # .duplicate=True if already stored
    store.find_duplicate(image_sha256, mask_sha256, global_fp, local_fp) -> StoredConcept | None
    store.get(name_or_id_prefix) -> StoredConcept        # ConceptNotFound names close matches
    store.load(name_or_id) -> Concept                    # float32 tensors, validated
    store.for_generation(names, global_fp, local_fp, allow_mapper_mismatch=False) -> {name: Concept}
    store.list(tag=None, pattern=None, limit=None, offset=0, sort="name"|"recent"); store.count(tag, pattern)
    store.rename(name, new); store.tag(name, *tags); store.untag(name, *tags)
    store.remove(name, keep_sources=False) -> kept source paths
    store.reencode(name, encoder) -> StoredConcept;  store.stale(global_fp, local_fp) -> [StoredConcept]
    store.check(verify_hashes=True) -> CheckReport;  store.repair() -> RepairReport
    ConceptStore.rebuild_index(home) -> (store, RepairReport)   # when library.db is unreadable
    store.export(name, path, format="elite"|"diffusers"|"a1111", token=None, overwrite=False) -> ExportResult
    store.import_concept(path, name=None, replace=False) -> StoredConcept
    store.suggestions(name) -> [names]
    store.new_run_id(); store.record_generation(run_id=, prompt=, negative_prompt=, seed=, image_index=,
        parameters=, concept_ids=, output_path=, duration_s=) -> row id
    store.list_history(limit=20, offset=0, contains=None) -> [HistoryEntry]; store.get_run(run_id) -> [HistoryEntry];
    store.list_runs(limit=20) -> [[HistoryEntry]] (whole runs, newest first)
"""

from elite_cli.library.names import NAME_RULE, name_from_stem, validate_name
from elite_cli.library.records import CheckReport, ExportResult, HistoryEntry, Problem, RepairReport, StoredConcept
from elite_cli.library.store import ConceptStore, mapper_mismatch

__all__ = ["ConceptStore", "StoredConcept", "CheckReport", "RepairReport", "Problem", "ExportResult", "HistoryEntry",
           "NAME_RULE", "mapper_mismatch", "name_from_stem", "validate_name"]
