"""`pcdsl.fit`: training from Python in one call, with the arguments `pcdsl train` checks."""

from __future__ import annotations

from typing import Any

import numpy as np

from pcdsl import arguments
from pcdsl.ir.graph import CircuitGraph
from pcdsl.params import Parameters


def fit(graph: CircuitGraph, data: Any, *, params: Parameters | None = None, valid: Any = None,
        backend: str = "torch", epochs: int = 10, full_epochs: int = 10, batch_size: int = 512,
        step: tuple[float, float] = (0.1, 0.01), pseudocount: float = 0.1, patience: int | None = 3,
        seed: int = 0, progress: bool = False, **options: Any) -> Parameters:
    """Learn a circuit's parameters from `data` (rows of values, -1 or NaN missing) as `pcdsl train`
    does: mini-batch EM with the step size annealed from step[0] to step[1], then full-batch EM;
    the parameters with the best score on `valid` (else the last) are returned. `params` continues
    from given parameters (e.g. a model file's); otherwise they start from `seed` (Gaussian leaves
    from the data). `options` go to `pcdsl.compile` (device=, dtype=)."""
    import pcdsl
    from pcdsl.learn.gaussian import from_data
    from pcdsl.learn.train import Stage, Trainer
    from pcdsl.params import initialise

    names, sizes = [v.name for v in graph.variables], [v.domain.size for v in graph.variables]
    train = np.asarray(_numpy(arguments.evidence(data, names, sizes, "data")))
    held = None if valid is None else np.asarray(_numpy(arguments.evidence(valid, names, sizes, "valid")))
    if len(train) == 0:
        raise arguments.InvalidArgument("E0805", "data has no rows to learn from")
    epochs, full_epochs = arguments.integer(epochs, "epochs"), arguments.integer(full_epochs, "full_epochs")
    batch_size = arguments.integer(batch_size, "batch_size", 1)
    if not isinstance(step, (tuple, list)) or len(step) not in (1, 2):
        raise arguments.InvalidArgument("E0801", f"step must be (first, last) step sizes, found {step!r}")
    steps = tuple(arguments.real(s, "step", 0.0, 1.0, open_low=True) for s in step)
    pseudocount = arguments.real(pseudocount, "pseudocount", 0.0)
    patience = None if patience is None else arguments.integer(patience, "patience", 1)
    seed = arguments.seed(seed)
    if params is None:
        params = from_data(graph, initialise(graph, seed), train, seed)
    model = pcdsl.compile(graph, backend, params=params, **options)
    stages = [Stage("em", epochs, batch_size, steps, pseudocount, patience),
              Stage("full_em", full_epochs, batch_size, (1.0,), pseudocount, patience)]
    return Trainer(model, params, train, held, seed, progress).run(stages)


def _numpy(x: Any) -> Any:
    return x.detach().cpu().numpy() if arguments.is_tensor(x) else x
