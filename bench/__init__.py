"""GPU benchmark suite: the server beside its peer (transformers) and the hardware limit."""

from rich.console import Console

# Every bench prints through this: device runs log to a file, where rich would otherwise wrap
# tables at 80 columns and truncate their digits.
console = Console(width=200)
