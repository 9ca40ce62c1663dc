"""Import bitsandbytes quietly, before diffusers and peft import it on their own.

diffusers (its quantizers) and peft import bitsandbytes whenever it is installed. On a CPU with AVX-512 BF16,
bitsandbytes' CPU backend then looks for an optional `kernels` package at import time and, without it, logs
"Failed to load CPU gemm_4bit_forward from kernels-community ..." through its module logger, which Python's
last-resort handler prints to stderr: a line unrelated to anything sdlora does, on every command. We import it
first with that one logger raised to ERROR for the duration of the import, then put the level back, so nothing
bitsandbytes says later (a real error of adamw8bit, say) is hidden.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

NOISY_LOGGER = "bitsandbytes.backends.cpu.ops"


def import_bitsandbytes_quietly() -> None:
    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    logger = logging.getLogger(NOISY_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # a broken install: whoever needs it (train.optimizer adamw8bit) reports that
        pass
    finally:
        logger.setLevel(level)
