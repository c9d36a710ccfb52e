"""Building catalog versions from datasets: one entry point, :func:`index_dataset`."""

from p4r.indexer.build import (
    BuildOptions,
    ShrinkError,
    UpsertReport,
    index_dataset,
    with_logged_events,
)
from p4r.indexer.plan import PlannedPoint, plan_digest, plan_points

__all__ = ["BuildOptions", "PlannedPoint", "ShrinkError", "UpsertReport", "index_dataset",
           "plan_digest", "plan_points", "with_logged_events"]
