"""The one place that imports bitsandbytes (lazily) and silences its harmless start-up noise.

bitsandbytes 0.50 logs "Failed to load CPU gemm_4bit_forward from kernels-community"
on every CPU import when the optional `kernels` package is absent; its own C++ CPU
kernels are used instead, so students should not see that message.
"""

import importlib.util
import logging
import warnings
from types import ModuleType


def is_bnb_available() -> bool:
    """True when bitsandbytes can be imported (without importing it)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def quiet_bnb_logs() -> None:
    """Hide bitsandbytes' harmless CPU start-up messages (call before importing it)."""
    for name in ("bitsandbytes", "bitsandbytes.backends.cpu.ops", "bitsandbytes.backends.cpu"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")


def import_bnb() -> ModuleType:
    """Import bitsandbytes quietly, with a clear error when it is missing."""
    if not is_bnb_available():
        raise ImportError(
            "bitsandbytes is not installed: run `make test` once (it creates .venv) "
            "or `pip install bitsandbytes>=0.48`."
        )
    quiet_bnb_logs()
    import bitsandbytes

    return bitsandbytes
