"""CoWorld for TorchRL: collaborative world models for offline visual RL."""
import os
import sys

# MuJoCo picks its GL backend at import time; headless Linux needs EGL.
if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")

__version__ = "0.1.0"
