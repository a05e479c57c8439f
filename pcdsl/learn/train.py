"""Training loops: stages of mini-batch and full-batch EM, with step-size
schedules, early stopping and model selection on a validation split."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pcdsl.evaluate import evaluate, total_log_likelihood
from pcdsl.io import faults
from pcdsl.learn.em import GaussianPrior, add_flows, batches, em_update
from pcdsl.learn.gaussian import gaussian_prior, project, std_floors
from pcdsl.learn.parallel import SOLO, Group, all_reduce_flows, all_reduce_sum, shard, zero_flows
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


def mean_ll(model: Any, data: np.ndarray, batch_size: int = 2048, group: Group = SOLO) -> float:
    """Average log-likelihood per sample (missing values marginalised); with several workers,
    each scores its shard and the sums are all-reduced."""
    if group.size == 1:
        return evaluate(model, data, batch_size, progress=False).mean_log_likelihood
    mine = data[shard(np.arange(len(data)), group)]
    return all_reduce_sum(total_log_likelihood(model, mine, batch_size), group) / len(data)


@dataclass
class Snapshot:
    """Everything a :class:`Trainer` needs to go on exactly as if it had never stopped: taken
    after any mini-batch (:attr:`Trainer.on_batch`) or epoch, restored by :meth:`Trainer.run`.
    A full-batch epoch has no inner position: a run stopped inside one repeats it whole."""

    position: tuple[int, int, int]  # (stage, epoch, epochs without progress) of the epoch in progress or next
    params: Parameters
    best: tuple[float, Parameters | None] | None = None  # params None: the best are `params`
    rng: dict[str, Any] | None = None  # the run generator's state (numpy bit_generator.state)
    batch: int = 0  # mini-batches of the epoch in progress already done (0: none, at an epoch boundary)
    order: tuple[np.ndarray, ...] = ()  # that epoch's mini-batches (row indices), when batch > 0
    train_ll: float = 0.0  # log-likelihood summed over those batches
    step: float = 0.0  # the step size of the last of them
    optimizer: tuple[dict[str, np.ndarray], int] | None = None  # SGD stages: Optimizer.state()
    extra: dict[str, Any] = field(default_factory=dict)  # what a caller keeps with it (e.g. epochs done)


@dataclass(frozen=True)
class _InEpoch:
    epoch: int
    order: tuple[np.ndarray, ...]
    batch: int
    train_ll: float
    step: float


class Trainer:
    """Runs stages on a compiled model; keeps the parameters with the best valid score."""

    def __init__(self, model: Any, params: Parameters, train: np.ndarray, valid: np.ndarray | None = None,
                 seed: int = 0, progress: bool = True, on_epoch: Callable[[Epoch, Parameters], None] | None = None,
                 group: Group = SOLO):
        self.model, self.params = model, params
        self.group = group  # data-parallel workers: every flow is all-reduced over them
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
        self.on_batch: Callable[[Trainer], None] | None = None  # after every mini-batch (checkpoints)
        self._pending: Snapshot | None = None  # restored progress, until the stage it belongs to takes it
        self._in_epoch: _InEpoch | None = None  # the mini-batch epoch in progress
        self._stale = 0  # epochs without progress before the epoch in progress

    def run(self, stages: list[Stage], start_epoch: int = 0, position: tuple[int, int, int] | None = None,
            resume: Snapshot | None = None) -> Parameters:
        """Train every stage; return the best parameters (by valid score, else the last).

        `resume`: a :meth:`snapshot` of a stopped run; this one goes on to the very same result.
        A run resumed at an epoch boundary may instead give `position` = (stage, epoch, epochs
        without progress), the :attr:`position` after its last finished epoch (exact even where
        a stage stopped early), or `start_epoch`, a count of finished epochs (which assumes no
        stage stopped early)."""
        if resume is not None:
            self.restore(resume)
            position = resume.position
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
        self._pending = None
        final = self.best[1] if self.best is not None else self.params
        self.model.set_parameters(final)
        return final

    def snapshot(self) -> Snapshot:
        """The trainer's whole state now (between mini-batches or epochs)."""
        best: tuple[float, Parameters | None] | None = None
        if self.best is not None:
            best = (self.best[0], None if self.best[1] is self.params else self.best[1])
        optimizer = self.optimizer.state() if self.optimizer is not None else None
        rng = dict(self.rng.bit_generator.state)
        now = self._in_epoch
        if now is None:
            return Snapshot(self.position, self.params, best, rng, optimizer=optimizer)
        return Snapshot((self._stage_index, now.epoch, self._stale), self.params, best, rng, now.batch, now.order,
                        now.train_ll, now.step, optimizer)

    def restore(self, snapshot: Snapshot) -> None:
        """Take up a :meth:`snapshot` (parameters, best, generator; the rest when its stage starts)."""
        snapshot.params.fixed = self.params.fixed  # what learning keeps is the circuit's, not the file's
        self.params = snapshot.params
        if snapshot.best is not None:
            score, best = snapshot.best
            if best is not None:
                best.fixed = self.params.fixed
            self.best = (score, self.params if best is None else best)
        if snapshot.rng is not None:
            self.rng.bit_generator.state = snapshot.rng
        self.position = snapshot.position
        self._pending = snapshot
        self.model.set_parameters(self.params)

    def _stage(self, index: int, stage: Stage, first_epoch: int, stale: int = 0) -> None:
        self._stage_index = index
        pending = self._pending if self._pending is not None and self._pending.position[0] == index else None
        per_epoch = math.ceil(stage.epoch_rows(len(self.train)) / stage.batch_size) if stage.kind != "full_em" else 1
        self.floors = std_floors(self.model.plan, self.train, stage.min_std)
        self.prior = gaussian_prior(self.model.plan, self.train, stage.gaussian_pseudocount)
        if pending is None or pending.batch == 0:  # not inside an epoch, where no update projects
            projected = project(self.params, self.floors)  # EM is monotone from a start above the floor
            if projected is not self.params:
                self.params = projected
                self.model.set_parameters(self.params)
        self.optimizer = Optimizer(self.params, stage.optimizer, min_std=self.floors) if stage.kind == "sgd" else None
        if self.optimizer is not None and pending is not None and pending.optimizer is not None:
            self.optimizer.load_state(*pending.optimizer)
        if pending is None or pending.batch == 0:
            self._pending = None
        for epoch in range(first_epoch, stage.epochs):
            started = time.perf_counter()
            self._stale = stale
            step, train_ll = self._epoch(stage, epoch, per_epoch)
            valid_ll = mean_ll(self.model, self.valid, group=self.group) if self.valid is not None else None
            record = Epoch(index, epoch, step, train_ll, valid_ll, time.perf_counter() - started)
            self.history.append(record)
            improved = self._select(record)
            stale = 0 if improved else stale + 1
            stop = stage.patience is not None and stale >= stage.patience
            # where a run resumed after this epoch continues
            self.position = (index + 1, 0, 0) if stop or epoch + 1 == stage.epochs else (index, epoch + 1, stale)
            if self.on_epoch is not None:
                self.on_epoch(record, self.params)
            faults.point("epoch", "stopped" if stop else "")
            if stop:
                break

    def _epoch(self, stage: Stage, epoch: int, per_epoch: int) -> tuple[float, float]:
        total_steps = stage.epochs * per_epoch
        if stage.kind == "full_em":
            self._evidence(stage)
            flows = self._full_batch_flows(max(stage.batch_size, 1024))
            self._update(flows, 1.0, stage, len(self.train))
            return 1.0, flows.log_likelihood / len(self.train)
        chosen = stage.epoch_rows(len(self.train))
        pending, self._pending = self._pending, None
        if pending is not None and pending.batch > 0:  # resumed inside this epoch
            order, first, ll, step = pending.order, pending.batch, pending.train_ll, pending.step
        else:
            order, first, ll, step = self._order(stage, epoch, chosen, per_epoch), 0, 0.0, stage.step[0]
        bar: Any = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(order), initial=first, desc=f"epoch {epoch + 1}/{stage.epochs}", leave=False)
        for i in range(first, len(order)):
            rows = order[i]
            step = schedule(stage.step, (epoch * per_epoch + i) / max(1, total_steps - 1))
            if self.optimizer is not None:
                flows = self._batch_flows(rows)
                self.params = self._constrained(self.optimizer.step(self.params, flows, len(rows), step))
                self.model.set_parameters(self.params)
            else:
                self._evidence(stage)
                flows = self._batch_flows(rows)
                self._update(flows, step, stage, len(rows))
            ll += flows.log_likelihood
            self._in_epoch = _InEpoch(epoch, order, i + 1, ll, step)
            if bar is not None:
                bar.update()
                bar.set_postfix(ll=f"{flows.log_likelihood / len(rows):.3f}")
            if self.on_batch is not None:
                self.on_batch(self)
            faults.point("batch")
        if bar is not None:
            bar.close()
        self._in_epoch = None
        return step, ll / chosen

    def _order(self, stage: Stage, epoch: int, chosen: int, per_epoch: int) -> tuple[np.ndarray, ...]:
        """The epoch's mini-batches (row indices), drawn from the run's generator (or, with
        :attr:`per_epoch_rng`, the epoch's own); every worker draws the same."""
        rng = np.random.default_rng((self.seed, self._stage_index, epoch)) if self.per_epoch_rng else self.rng
        if chosen == len(self.train):
            return tuple(batches(len(self.train), stage.batch_size, rng))
        return tuple(np.array_split(rng.choice(len(self.train), chosen, replace=False), per_epoch))

    def _batch_flows(self, rows: np.ndarray) -> Any:
        """The flows of a global mini-batch: this worker's shard, summed over the workers."""
        mine = shard(rows, self.group)
        if len(mine) == 0:  # more workers than rows: this one adds nothing, in the same layout
            return all_reduce_flows(zero_flows(add_flows(None, self.model.flows(self.train[rows[:1]]))), self.group)
        return all_reduce_flows(add_flows(None, self.model.flows(self.train[mine])), self.group)

    def _full_batch_flows(self, chunk: int) -> Any:
        """The flows of the whole training set, this worker's shard chunk by chunk, then summed."""
        mine = shard(np.arange(len(self.train)), self.group)
        total = None
        for piece in batches(len(mine), chunk, None):
            total = add_flows(total, self.model.flows(self.train[mine[piece]]))
            faults.point("full-batch")
        if total is None:
            total = zero_flows(add_flows(None, self.model.flows(self.train[:1])))
        return all_reduce_flows(total, self.group)

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
