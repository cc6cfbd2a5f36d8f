"""Fault injection for deploy.batch's tests: a "poison" image that kills the process decoding it.

On PYTHONPATH (the tests put it there for their Ray cluster and for deploy.batch), every
Python process patches ``runtimes.preprocess.load_with_mode`` once that module is imported:
a file whose bytes begin with POISON gets the process a SIGSEGV, as a native decoder's
crash would; one that begins with HANG never returns, as a decoder stuck in a loop would.
Any other input is decoded as usual.
"""

import importlib.abc
import os
import signal
import sys
import time

POISON = b"GOOGLENET-POISON"
HANG = b"GOOGLENET-HANG"


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "runtimes.preprocess":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            real = module.load_with_mode

            def load_with_mode(data, *args, **kwargs):
                if isinstance(data, (bytes, bytearray)) and bytes(data[: len(POISON)]) == POISON:
                    os.kill(os.getpid(), signal.SIGSEGV)
                if isinstance(data, (bytes, bytearray)) and bytes(data[: len(HANG)]) == HANG:
                    while True:
                        time.sleep(1)
                return real(data, *args, **kwargs)

            module.load_with_mode = load_with_mode

        spec.loader.exec_module = exec_module
        return spec


import importlib.util  # noqa: E402

sys.meta_path.insert(0, _PatchOnImport())
