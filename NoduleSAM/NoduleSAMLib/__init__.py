"""NoduleSAM's engine: read a CT, detect nodules (nnU-Net v2), refine each box (SAM), measure.

Importable without Slicer and without Qt; the ``scene`` package is the only one that imports ``slicer``.
"""
from .errors import NoduleSAMError

__version__ = "0.1.0"
__all__ = ["NoduleSAMError", "__version__"]
