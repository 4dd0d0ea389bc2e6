"""Short import path for the CLI: `from elite_cli.store import ConceptStore` (see elite_cli.library)."""

from elite_cli.library import (CheckReport, ConceptStore, ExportResult, HistoryEntry, NAME_RULE, Problem,
                               RepairReport, StoredConcept, mapper_mismatch, name_from_stem, validate_name)

__all__ = ["ConceptStore", "StoredConcept", "CheckReport", "RepairReport", "Problem", "ExportResult", "HistoryEntry",
           "NAME_RULE", "mapper_mismatch", "name_from_stem", "validate_name"]
