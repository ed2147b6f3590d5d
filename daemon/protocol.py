"""Moved to ``lowdose.wire.protocol``; this alias keeps scripts written against lowdose 0.1 working.

New code imports from ``lowdose.client`` (hooks, sender, config, messages) or from ``lowdose.wire.protocol``.
"""

from lowdose.wire.protocol import *  # noqa: F401,F403
