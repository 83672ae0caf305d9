"""The standard provider's FileSensor on one literal absolute path (the local published marker)."""
from __future__ import annotations

import glob
import os
from functools import cached_property

from airflow.providers.standard.sensors.filesystem import FileSensor


class PublishedMarkerSensor(FileSensor):
    """`FileSensor` (its poke, its deferrable `FileTrigger`) on an absolute path taken literally:
    no `fs` connection is looked up (its base path would not change an absolute path anyway) and a
    glob character in a directory name matches only itself."""

    @cached_property
    def path(self) -> str:
        if not os.path.isabs(self.filepath):
            raise ValueError(f"{self.task_id}: {self.filepath!r} is not an absolute path")
        return glob.escape(self.filepath)
