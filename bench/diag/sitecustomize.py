"""On the GPU machine only (bench/part.sh puts this folder on PYTHONPATH): every Python process dumps
its threads' stacks on SIGUSR1, and once R1_DUMP_AFTER seconds after it started if that is set."""

import faulthandler
import os
import signal
import sys

faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
if os.environ.get("R1_DUMP_AFTER"):
    faulthandler.dump_traceback_later(float(os.environ["R1_DUMP_AFTER"]), exit=False, file=sys.stderr)
