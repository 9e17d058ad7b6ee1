"""dynacnn: run only the parts of a trained CNN that an input needs (CP-CNN routing, MS-CNN early exits)."""

__version__ = "0.2.0"
