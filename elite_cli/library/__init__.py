"""The concept library: `ConceptStore` over `$ELITE_HOME` (format: library/FORMAT.md).

Importing this package does not import torch; only loading, adding and exporting concepts do.
"""

from elite_cli.library.names import NAME_RULE, name_from_stem, validate_name
from elite_cli.library.records import CheckReport, ExportResult, HistoryEntry, Problem, RepairReport, StoredConcept
from elite_cli.library.store import ConceptStore, mapper_mismatch

__all__ = ["ConceptStore", "StoredConcept", "CheckReport", "RepairReport", "Problem", "ExportResult", "HistoryEntry",
           "NAME_RULE", "mapper_mismatch", "name_from_stem", "validate_name"]
