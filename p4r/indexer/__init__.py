"""Building catalog versions from datasets, and syncing the user state: one entry point,
:func:`index_dataset`."""

from p4r.indexer.build import BuildOptions, ShrinkError, UpsertReport, index_dataset
from p4r.indexer.plan import PlannedPoint, interaction_records, plan_digest, plan_points

__all__ = ["BuildOptions", "PlannedPoint", "ShrinkError", "UpsertReport", "index_dataset",
           "interaction_records", "plan_digest", "plan_points"]
