"""Benchmark tasks: prompt templates, offline / hub data with seeded sampling, and metrics."""

from rmask_tune.tasks.base import ChoiceExample, Example, GenerationExample, ImageExample, TaskSplits
from rmask_tune.tasks.registry import TASKS, Task, get_task

__all__ = [
    "TASKS",
    "ChoiceExample",
    "Example",
    "GenerationExample",
    "ImageExample",
    "Task",
    "TaskSplits",
    "get_task",
]
