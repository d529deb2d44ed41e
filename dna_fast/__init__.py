"""dna_fast: fast block-wise supervised NAS with knowledge distillation.

Implements DNA (Li et al., "Blockwisely Supervised Neural Architecture Search with Knowledge
Distillation", CVPR 2020, arXiv:1911.13053): distill a supernet block by block from a teacher,
rate every candidate of every block, search exactly under a budget, retrain.

The public API is re-exported lazily (PEP 562) so ``import dna_fast`` stays cheap and a
module's heavy imports (timm, DALI, pandas) load only when that part is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._backend import backend_info
from ._version import __version__

# public name -> module that defines it
_EXPORTS = {
    "SearchSpace": "dna_fast.space",
    "BlockSpec": "dna_fast.space",
    "CellSpec": "dna_fast.space",
    "Candidate": "dna_fast.space",
    "OpSpec": "dna_fast.space",
    "parse_op": "dna_fast.space",
    "builtin_spaces": "dna_fast.space",
    "build_loader": "dna_fast.data",
    "Supernet": "dna_fast.supernet",
    "Teacher": "dna_fast.teacher",
    "distill": "dna_fast.distill",
    "rate_block": "dna_fast.rating",
    "rate": "dna_fast.rating",
    "search": "dna_fast.search",
    "pareto_front": "dna_fast.search",
    "Architecture": "dna_fast.search",
}

__all__ = ["__version__", "backend_info", "models", *_EXPORTS]

# DNA-a..d register with timm (`timm.create_model("dna_a")`) when dna_fast.models is imported: do it now so that
# `import dna_fast` is enough. It loads timm, which everything past the ops needs anyway.
from . import models  # noqa: E402

# NOTE: `distill` and `search` name both a function and its module. Importing a submodule binds the package
# attribute to the module (so after `import dna_fast.search`, a lazy export would return the module). Bind these two
# functions now, after their modules load: a later `import dna_fast.search` finds the module in sys.modules and
# leaves the attribute alone. Both modules are light once timm is loaded (~0.06 s).
from .distill import distill  # noqa: E402, F401
from .search import search  # noqa: E402, F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        try:  # submodules: dna_fast.models, dna_fast.cost, ...
            return importlib.import_module(f"dna_fast.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"dna_fast.{name}":
                raise
            raise AttributeError(f"module 'dna_fast' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
