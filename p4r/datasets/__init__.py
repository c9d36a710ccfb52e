"""Dataset readers and the dataset registry (no Qdrant, no LLM here)."""

from p4r.datasets.models import Dataset, Interaction, Item, Persona
from p4r.datasets.readers import load_dataset
from p4r.datasets.registry import dataset_dir

__all__ = ["Dataset", "Interaction", "Item", "Persona", "dataset_dir", "load_dataset"]
