"""Training loops: stages of mini-batch and full-batch EM, with step-size
schedules, early stopping and model selection on a validation split."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pcdsl.evaluate import evaluate
from pcdsl.learn.em import GaussianPrior, add_flows, batches, em_update, full_batch_flows
from pcdsl.learn.gaussian import gaussian_prior, project, std_floors
from pcdsl.learn.regularise import entropy_weights, reach, softened, unsoften
from pcdsl.learn.sgd import Optimizer
from pcdsl.params import Parameters
from pcdsl.reference import Flows

MIN_IMPROVEMENT = 1e-4  # nats per sample; smaller gains count as no progress for early stopping


@dataclass(frozen=True)
class Stage:
    """One training stage. `step` holds the points of a piecewise-linear schedule over the
    stage's updates: (0.1,) is constant, (0.1, 0.01) anneals linearly."""

    kind: str = "em"  # "em" (mini-batch) | "full_em" | "sgd" (gradient ascent; `step` is the learning rate)
    epochs: int = 10
    batch_size: int = 512
    step: tuple[float, ...] = (0.1,)
    pseudocount: float = 0.1
    patience: int | None = None  # stop after this many epochs without a better valid score
    optimizer: str = "adam"  # for "sgd" stages: "adam" | "sgd"
    soften: float = 0.0  # EM stages: data softening beta (pcdsl.learn.regularise)
    entropy: float = 0.0  # EM stages: entropy regularisation tau (pcdsl.learn.regularise)
    min_std: float | None = None  # Gaussian std floor; None: RELATIVE_STD_FLOOR x the variable's data std
    gaussian_pseudocount: float = 0.0  # EM stages: Gaussian prior strength (pcdsl.learn.gaussian)
    rows: int | None = None  # mini-batch stages: rows drawn afresh (seeded) for each epoch; None: all

    def epoch_rows(self, available: int) -> int:
        return available if self.rows is None else min(self.rows, available)


@dataclass(frozen=True)
class Epoch:
    stage: int
    epoch: int
    step: float
    train_ll: float  # mean log-likelihood per sample (during the epoch, for mini-batch EM; softened when softening)
    valid_ll: float | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def schedule(points: tuple[float, ...], progress: float) -> float:
    """The piecewise-linear schedule through `points` at `progress` in [0, 1]."""
    if len(points) == 1:
        return points[0]
    position = min(max(progress, 0.0), 1.0) * (len(points) - 1)
    i = min(int(position), len(points) - 2)
    return points[i] + (points[i + 1] - points[i]) * (position - i)


def mean_ll(model: Any, data: np.ndarray, batch_size: int = 2048) -> float:
    """Average log-likelihood per sample (missing values marginalised)."""
    return evaluate(model, data, batch_size, progress=False).mean_log_likelihood


class Trainer:
    """Runs stages on a compiled model; keeps the parameters with the best valid score."""

    def __init__(self, model: Any, params: Parameters, train: np.ndarray, valid: np.ndarray | None = None,
                 seed: int = 0, progress: bool = True, on_epoch: Callable[[Epoch, Parameters], None] | None = None):
        self.model, self.params = model, params
        self.train, self.valid = train, valid
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        # True: each epoch draws from its own generator, seeded by (seed, stage, epoch), so a run
        # resumed at an epoch boundary takes exactly the batches of an uninterrupted one
        self.per_epoch_rng = False
        self._stage_index = 0
        self.position = (0, 0, 0)  # (stage, epoch, epochs without progress) of the next epoch
        self.progress, self.on_epoch = progress, on_epoch
        self.history: list[Epoch] = []
        self.best: tuple[float, Parameters] | None = None
        self.optimizer: Optimizer | None = None
        self.learn: set[str] | None = None  # parameter groups to learn (None: all); others stay as they are
        # applied to the parameters after every update (progressive growing keeps pruned weights at 0)
        self.constrain: Callable[[Parameters], Parameters] | None = None
        self.floors: dict[str, float] = {}
        self.prior: GaussianPrior | None = None

    def run(self, stages: list[Stage], start_epoch: int = 0,
            position: tuple[int, int, int] | None = None) -> Parameters:
        """Train every stage; return the best parameters (by valid score, else the last).

        A resumed run starts at `position` = (stage, epoch, epochs without progress), the
        :attr:`position` saved after the last finished epoch: exact even where a stage stopped
        early. (`start_epoch`, a count of finished epochs, assumes no stage stopped early.)"""
        if position is None:
            done = start_epoch
            for index, stage in enumerate(stages):
                skip = min(done, stage.epochs)  # resuming: epochs already run are skipped
                done -= skip
                self._stage(index, stage, skip)
        else:
            for index, stage in enumerate(stages):
                if index >= position[0]:
                    first, stale = (position[1], position[2]) if index == position[0] else (0, 0)
                    self._stage(index, stage, first, stale)
        final = self.best[1] if self.best is not None else self.params
        self.model.set_parameters(final)
        return final

    def _stage(self, index: int, stage: Stage, first_epoch: int, stale: int = 0) -> None:
        self._stage_index = index
        per_epoch = math.ceil(stage.epoch_rows(len(self.train)) / stage.batch_size) if stage.kind != "full_em" else 1
        self.floors = std_floors(self.model.plan, self.train, stage.min_std)
        self.prior = gaussian_prior(self.model.plan, self.train, stage.gaussian_pseudocount)
        projected = project(self.params, self.floors)  # EM is monotone from a start above the floor
        if projected is not self.params:
            self.params = projected
            self.model.set_parameters(self.params)
        self.optimizer = Optimizer(self.params, stage.optimizer, min_std=self.floors) if stage.kind == "sgd" else None
        for epoch in range(first_epoch, stage.epochs):
            started = time.perf_counter()
            step, train_ll = self._epoch(stage, epoch, per_epoch)
            valid_ll = mean_ll(self.model, self.valid) if self.valid is not None else None
            record = Epoch(index, epoch, step, train_ll, valid_ll, time.perf_counter() - started)
            self.history.append(record)
            improved = self._select(record)
            stale = 0 if improved else stale + 1
            stop = stage.patience is not None and stale >= stage.patience
            # where a run resumed after this epoch continues
            self.position = (index + 1, 0, 0) if stop or epoch + 1 == stage.epochs else (index, epoch + 1, stale)
            if self.on_epoch is not None:
                self.on_epoch(record, self.params)
            if stop:
                break

    def _epoch(self, stage: Stage, epoch: int, per_epoch: int) -> tuple[float, float]:
        total_steps = stage.epochs * per_epoch
        if stage.kind == "full_em":
            self._evidence(stage)
            flows = full_batch_flows(self.model, self.train, max(stage.batch_size, 1024))
            self._update(flows, 1.0, stage, len(self.train))
            return 1.0, flows.log_likelihood / len(self.train)
        ll, step = 0.0, stage.step[0]
        chosen = stage.epoch_rows(len(self.train))
        rng = np.random.default_rng((self.seed, self._stage_index, epoch)) if self.per_epoch_rng else self.rng
        rows_iter: Any = batches(len(self.train), stage.batch_size, rng) if chosen == len(self.train) else \
            iter(np.array_split(rng.choice(len(self.train), chosen, replace=False), per_epoch))
        if self.progress:
            from tqdm import tqdm

            rows_iter = tqdm(rows_iter, total=per_epoch, desc=f"epoch {epoch + 1}/{stage.epochs}", leave=False)
        for i, rows in enumerate(rows_iter):
            step = schedule(stage.step, (epoch * per_epoch + i) / max(1, total_steps - 1))
            if self.optimizer is not None:
                flows = add_flows(None, self.model.flows(self.train[rows]))
                self.params = self._constrained(self.optimizer.step(self.params, flows, len(rows), step))
                self.model.set_parameters(self.params)
            else:
                self._evidence(stage)
                flows = add_flows(None, self.model.flows(self.train[rows]))
                self._update(flows, step, stage, len(rows))
            ll += flows.log_likelihood
            if self.progress:
                rows_iter.set_postfix(ll=f"{flows.log_likelihood / len(rows):.3f}")
        return step, ll / chosen

    def _evidence(self, stage: Stage) -> None:
        """With softening, flows come from the softened leaves (valid is scored on the plain ones)."""
        if stage.soften > 0:
            self.model.set_parameters(softened(self.params, stage.soften))

    def _update(self, flows: Any, step: float, stage: Stage, samples: int) -> None:
        if self.learn is not None:  # groups without flows are kept by em_update
            flows = Flows({g: f for g, f in flows.weights.items() if g in self.learn},
                          {g: s for g, s in flows.inputs.items() if g in self.learn}, {}, flows.log_likelihood)
        if stage.soften > 0:
            flows = unsoften(flows, self.params, stage.soften)
        weights = None
        if stage.entropy > 0:
            weights = entropy_weights(reach(self.model, self.train.shape[1]), stage.entropy, samples)
        self.params = self._constrained(em_update(self.params, flows, step, stage.pseudocount, self.floors, weights,
                                                  prior=self.prior))
        self.model.set_parameters(self.params)

    def _constrained(self, params: Parameters) -> Parameters:
        return params if self.constrain is None else self.constrain(params)

    def _select(self, record: Epoch) -> bool:
        """Keep the best parameters; True when the score rose by more than MIN_IMPROVEMENT."""
        score = record.valid_ll if record.valid_ll is not None else record.train_ll
        previous = self.best[0] if self.best is not None else -math.inf
        if score > previous:
            self.best = (score, self.params)
        return score > previous + MIN_IMPROVEMENT
