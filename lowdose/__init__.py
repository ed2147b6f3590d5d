"""lowdose: live denoising for low-dose light microscopy.

The service is split in three visible folders mapped into this package:
``lowdose.daemon`` (the service), ``lowdose.plugins`` (acquisition hooks and
denoiser back-ends) and ``lowdose.models`` (the learned networks).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lowdose")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
