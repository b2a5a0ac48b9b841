"""Data only: the MindVideo model schemas and documented examples.

Both the client (`mvbatch.plan.catalog`) and the simulator (`mvbatch.sim`) read
these files; nothing here may import code from either side.
"""

from importlib.resources import files
from importlib.resources.abc import Traversable


def data_dir() -> Traversable:
    return files(__name__)
