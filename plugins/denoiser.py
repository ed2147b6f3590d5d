"""Moved to ``lowdose.plugins.denoisers.interface`` (the interface) and ``.registry`` (finding
denoisers by name); this alias keeps denoisers written against lowdose 0.1 working.
"""

from lowdose.plugins.denoisers.interface import *  # noqa: F401,F403
from lowdose.plugins.denoisers.registry import ENTRY_POINT_GROUP, available_denoisers, create_denoiser  # noqa: F401
