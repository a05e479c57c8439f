"""The torch backend: a LayeredPlan lowered to tensor ops, on any device.

The passes and queries live in ``runtime.py`` (:class:`.runtime.Circuit`, on the rules of
``layers.py``), which needs only torch and numpy: ``pcdsl compile -o`` copies it into the emitted
package as it is. :class:`TorchModel` wraps a ``Circuit`` with what pcdsl adds: argument checks of
the shared query API, parameters in by group, flows out by group, and :meth:`TorchModel.module`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from pcdsl.backends import PlanModel, add_weight_flows, api, split_input_flows

from pcdsl.plan import LayeredPlan
from pcdsl.reference import Flows

from .layers import InputRule, SumRule
from .runtime import BUFFER_VALUES, Circuit, Leaves, add_stats, as_dtype

if TYPE_CHECKING:
    from .module import CircuitModule

__all__ = ["BUFFER_VALUES", "UNSUPPORTED", "Circuit", "Leaves", "TorchModel", "add_stats", "lower"]

UNSUPPORTED: dict[str, str] = {}  # every construct of pcdsl.backends.CONSTRUCTS is lowered


def lower(plan: LayeredPlan, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
          buffer_values: int = BUFFER_VALUES) -> TorchModel:
    return TorchModel(plan, torch.device(device), as_dtype(dtype), buffer_values)


class TorchModel(PlanModel):
    """A compiled circuit. Data: (batch, variables) numpy arrays or tensors; -1 or NaN marks a
    missing value (NaN for real variables). Results come back in the type they were given.
    ``circuit`` is the :class:`.runtime.Circuit` that runs the passes."""

    def __init__(self, plan: LayeredPlan, device: torch.device, dtype: torch.dtype,
                 buffer_values: int = BUFFER_VALUES):
        self.plan = plan
        self.device, self.dtype = device, dtype
        self.circuit = Circuit(plan, device, dtype, buffer_values)

    def _load(self, layers: list[int] | None) -> None:
        self.circuit.load(self.plan, layers)

    @property
    def sync_free(self) -> bool:
        """Whether the sum rules run a pass without reading anything back to the host (see
        :attr:`.runtime.Circuit.sync_free`)."""
        return self.circuit.sync_free

    @sync_free.setter
    def sync_free(self, value: bool) -> None:
        self.circuit.sync_free = value

    def module(self, leaves: Sequence[str] = ()) -> CircuitModule:
        """This circuit as a ``torch.nn.Module`` (its own copy of the parameters, on this model's
        device and dtype): ``forward(x)`` is log p(x) with gradients; `leaves` names input node
        groups whose log-likelihoods the caller supplies (neural leaves). See :mod:`.module`."""
        from .module import CircuitModule

        return CircuitModule(self.plan, leaves=leaves, device=self.device, dtype=self.dtype)

    # ---- queries (arguments checked and results typed by pcdsl.backends.api) ----------------------
    @api.log_prob
    def log_prob(self, x: Any) -> Any:
        """log p(x) per row; missing entries are marginalised."""
        return self.circuit.log_prob(x)

    @api.conditional
    def conditional(self, x: Any, query: Any) -> Any:
        """log p(x_Q | x_E): Q the query variables (indices, names or a mask), E the other observed ones.

        NaN where p(x_E) = 0: the conditional is undefined there."""
        return self.circuit.conditional(x, query)

    @api.map_state
    def map(self, x: Any) -> tuple[Any, Any]:
        """Complete missing entries by max-product and backtracking; return (completion, its log p).

        The completion is the exact MPE for deterministic circuits; otherwise it is the
        max-product (Viterbi) approximation. The log-probability is exact either way. Rows whose
        evidence has probability zero get NaN in their missing entries and log p = -inf."""
        return self.circuit.map(x)

    @api.sample
    def sample(self, n: int, evidence: Any = None, seed: int = 0) -> Any:
        """n ancestral samples; with evidence (one row or n rows), from p(missing | observed).
        Where the evidence has probability zero (undefined), the missing entries are NaN."""
        return self.circuit.sample(n, evidence, seed)

    @api.flows
    def flows(self, x: Any) -> Flows:
        """Expected sufficient statistics of every parameter, summed over the batch."""
        return cast(Flows, self.passes(x)[1])

    def passes(self, x: Any, leaf_slots: torch.Tensor | None = None, leaf_values: torch.Tensor | None = None,
               flows: bool = True) -> tuple[torch.Tensor, Flows | None]:
        """log p(x) per row and, if `flows`, the flows summed over the rows (:meth:`.runtime.Circuit.passes`,
        by parameter group). No argument checks: the public queries make them."""
        log_p, totals = self.circuit.passes(x, leaf_slots, leaf_values, flows)
        return log_p, (self.as_flows(totals, float(log_p.double().sum())) if flows else None)

    def node_values(self, x: Any, slots: Any) -> torch.Tensor:
        """(rows, len(slots)) log-values of the units at buffer `slots` (``plan.slot_of[group]`` +
        unit) on the rows of x, in pieces."""
        return self.circuit.node_values(x, slots)

    def as_flows(self, totals: list[dict[str, torch.Tensor]], log_likelihood: float = 0.0) -> Flows:
        """Each rule's statistics (:meth:`.runtime.Circuit.passes`) handed to the parameter groups."""
        result = Flows(log_likelihood=log_likelihood)
        rules = self.circuit.rules
        for i in range(len(rules) - 1, -1, -1):
            rule = rules[i]
            if isinstance(rule, SumRule):
                add_weight_flows(rule.layer, totals[i]["weights"], result, self.weight_rows)
            elif isinstance(rule, InputRule):
                split_input_flows(rule.layer, totals[i], self.plan, result)
        return result
