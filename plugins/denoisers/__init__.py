"""Denoiser back-ends: the plug-in interface, the entry-point registry, the classical methods.

The learned models register themselves from ``lowdose.models.denoisers``; nothing
here imports them.
"""
