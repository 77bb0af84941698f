"""Data layer: medical tasks (MedMNIST npz + cards, image folders) and natural-image sources."""

from robaudit.data.cards import DatasetCard
from robaudit.data.memory import Data, MemoryTask, load_data
from robaudit.data.sources import ImageSource, load_source
from robaudit.data.tasks import TaskData, list_tasks, load_task

__all__ = ["Data", "DatasetCard", "ImageSource", "MemoryTask", "TaskData", "list_tasks", "load_data", "load_source",
           "load_task"]
