"""Moved to ``lowdose.plugins.acquisition.sender``; this alias keeps scripts written against lowdose 0.1 working.

New code imports from ``lowdose.client`` (hooks, sender, config, messages) or from ``lowdose.plugins.acquisition.sender``.
"""

from lowdose.plugins.acquisition.sender import *  # noqa: F401,F403
