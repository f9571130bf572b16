"""Count the host reads of device values a piece of code makes (each one waits for a GPU to drain).

    with HostReads() as reads:
        generator.generate(**inputs, max_new_tokens=40)
    print(reads.count, reads.by_caller.most_common(5))

Counted: `.item()`, `.tolist()`, `.cpu()`, `.numpy()`, `bool(t)`, `int(t)`, `float(t)`, `t.__index__`,
`nonzero` / `argwhere`, `unique`, `masked_select`, and indexing with a boolean tensor (which needs
`nonzero`). It counts on any device, so it runs in CPU tests: a count is what a GPU would wait for.
Calls made inside another counted call (a `.tolist()` inside `unique`) count once. `count_in(dir)`
separates the reads of one package's code (bild's loop) from those of the models' own code (transformers
checks whether a 2D attention mask is all ones, one read per forward that gets a mask).
"""

from __future__ import annotations

import sys
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

_READS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__,
    torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero,
    torch.argwhere, torch.Tensor.unique, torch.unique, torch.unique_consecutive, torch.Tensor.masked_select,
    torch.masked_select,
}
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}


def _bool_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


class HostReads(TorchFunctionMode):
    """A torch function mode that counts host reads, by the first calling frame outside torch."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.callers: Counter[tuple[str, int, str]] = Counter()  # (file, line, function) -> reads
        self._depth = 0

    @property
    def by_caller(self) -> Counter[str]:
        return Counter({f"{file.rsplit('/', 2)[-1]}:{line} {fn}": n for (file, line, fn), n in self.callers.items()})

    def count_in(self, package_dir: str) -> int:
        """Reads made by code under `package_dir` (e.g. bild's own, not transformers')."""
        return sum(n for (file, _, _), n in self.callers.items() if file.startswith(package_dir))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        read = func in _READS or (func in _INDEXING and len(args) > 1 and _bool_index(args[1]))
        if read and self._depth == 0:
            self.count += 1
            self.callers[_caller()] += 1
        self._depth += read
        try:
            return func(*args, **kwargs)
        finally:
            self._depth -= read


def _caller() -> tuple[str, int, str]:
    frame = sys._getframe(2)
    while frame is not None and ("/torch/" in frame.f_code.co_filename or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return ("?", 0, "?")
    return (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
