"""On the GPU machine only (bench/part.sh puts this folder on PYTHONPATH): every Python process dumps
its threads' stacks on SIGUSR1, and once R1_DUMP_AFTER seconds after it started if that is set."""

import faulthandler
import os
import signal
import sys

faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
if os.environ.get("R1_DUMP_AFTER"):
    faulthandler.dump_traceback_later(float(os.environ["R1_DUMP_AFTER"]), exit=False, file=sys.stderr)

# R1_GC_LOG=FILE: each garbage collection of 1 ms or more appends "unix-time pid process generation ms"
# to FILE (a collection that stalls the engine loop or an API process would show in the ITL tail).
if os.environ.get("R1_GC_LOG"):
    import gc
    import multiprocessing
    import time

    _started = [0.0]

    def _gc_timer(phase: str, info: dict) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - _started[0]) * 1000
        if ms >= 1.0:
            name = multiprocessing.current_process().name
            with open(os.environ["R1_GC_LOG"], "a") as f:
                f.write(f"{time.time():.3f} {os.getpid()} {name} {info['generation']} {ms:.2f}\n")

    gc.callbacks.append(_gc_timer)
