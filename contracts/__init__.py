"""The published contracts of threadbus: every event on the bus and the subjects it lives on.

Non-Python services use the JSON Schema files in ``contracts/schema/``; Python code imports
from here. Nothing else in the code base builds subject strings.
"""

from contracts.events import *  # noqa: F401,F403
from contracts.events import __all__ as _events_all
from contracts import subjects  # noqa: F401

__all__ = [*_events_all, "subjects"]
