"""Moved to ``lowdose.plugins.acquisition.pycromanager_hook``; this alias keeps scripts written against lowdose 0.1 working.

New code imports from ``lowdose.client`` (hooks, sender, config, messages) or from ``lowdose.plugins.acquisition.pycromanager_hook``.
"""

from lowdose.plugins.acquisition.pycromanager_hook import *  # noqa: F401,F403
