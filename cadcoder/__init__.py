"""CadCoder's CAD side: sandboxed execution, geometry, evaluation, rendering, synthetic data and inference.

The Hub-face modules (`configuration_cadcoder`, `modeling_cadcoder`, `processing_cadcoder`) live at the
top level and never import this package, so a Hub checkpoint loads with torch, transformers and timm alone.
"""

__version__ = "0.1.0"
