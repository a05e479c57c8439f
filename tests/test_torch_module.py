"""A compiled circuit as a torch.nn.Module: log p(x) equal to the backend's, gradients equal to
the flows-based ones of pcdsl.learn.sgd and to finite differences, neural leaves trained with
torch.optim, state_dict round trips, EM on the same module, torch.compile."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from circuits import random_circuit

import pcdsl
from pcdsl import reference
from pcdsl.ir.graph import CircuitGraph, Domain, Variable
from pcdsl.learn.em import em_update
from pcdsl.learn.sgd import Optimizer
from pcdsl.params import Parameters, initialise
from pcdsl.plan import compile_plan, plan_parameters

from conftest import ATOL

torch = pytest.importorskip("torch")
from pcdsl.backends.torch.module import CircuitModule, group_name, key  # noqa: E402

CAT3 = Domain("categorical", 3)


def _tied_blocks() -> tuple[CircuitGraph, Parameters]:
    """Tied leaves, a tied sum, block-diagonal sums and a pruned (zero) weight."""
    variables = tuple(Variable(n, i, CAT3) for i, n in enumerate("abcd"))
    g = CircuitGraph("tied", variables)
    g.add_input("la", 0, "categorical", 4)
    g.add_input("lb", 1, "categorical", 4)
    g.add_input("lc", 2, "categorical", 4, tie="la")
    g.add_input("ld", 3, "categorical", 4)
    g.add_product("p", ("la", "lb"), "hadamard")
    g.add_product("q", ("lc", "ld"), "hadamard")
    g.add_sum("s", ("p",), 4, blocks=2)
    g.add_sum("t", ("q",), 4, blocks=2, tie="s")
    g.add_product("r", ("s", "t"), "hadamard")
    g.add_sum("heads", ("r",), 2, blocks=2)
    g.add_sum("root", ("heads",), 1)
    params = initialise(g, 5)
    params.weights["s"][0] = [0.0, 1.0]  # a pruned edge
    return g, params


def _module(graph: CircuitGraph, params: Parameters, **kw: object) -> CircuitModule:
    return CircuitModule(compile_plan(graph, params), dtype=torch.float64, **kw)


def _data(graph: CircuitGraph, params: Parameters, n: int, seed: int) -> np.ndarray:
    x = reference.sample(graph, params, n, seed=seed)
    rng = np.random.default_rng(seed)
    x[rng.random(x.shape) < 0.2] = np.nan  # marginalise some entries (NaN: missing, any type)
    return x


def _grad(module: CircuitModule, name: str) -> np.ndarray:
    """The gradient of the sgd parameter `name` ("w/group", "c/leaf", "m/leaf", "s/leaf")."""
    kind, group = name.split("/", 1)
    container = {"w": module.weights, "c": module.logits, "m": module.means, "s": module.log_stds}[kind]
    grad = container[key(group)].grad
    return np.zeros(container[key(group)].shape) if grad is None else grad.numpy()


CIRCUITS = [functools.partial(random_circuit, s, 5, real=s % 2 == 1) for s in range(6)] + [_tied_blocks]


@pytest.mark.parametrize("make", CIRCUITS)
def test_log_prob_and_gradients_equal_the_flows_based_ones(make) -> None:  # type: ignore[no-untyped-def]
    graph, params = make()
    x = _data(graph, params, 40, seed=1)
    module = _module(graph, params)
    lp = module(torch.as_tensor(x))
    assert np.allclose(lp.detach().numpy(), reference.log_prob(graph, params, x), atol=ATOL, rtol=0)
    lp.mean().backward()
    expected = Optimizer(params, "sgd")._gradients(params, reference.flows(graph, params, x), len(x))
    for name, g in expected.items():
        assert np.allclose(_grad(module, name), g, atol=ATOL, rtol=0), name


def test_gradients_equal_finite_differences() -> None:
    graph, params = random_circuit(7, 5, real=True)
    x = torch.as_tensor(_data(graph, params, 30, seed=2))
    module = _module(graph, params)
    module(x).sum().backward()
    rng = np.random.default_rng(0)
    for name, p in list(module.named_parameters())[::3]:
        index = tuple(int(rng.integers(s)) for s in p.shape)
        with torch.no_grad():
            p[index] += 1e-6
            up = float(module(x).sum())
            p[index] -= 2e-6
            down = float(module(x).sum())
            p[index] += 1e-6
        assert abs((up - down) / 2e-6 - float(p.grad[index])) < 1e-5 * max(1.0, abs(up)), name


def test_pruned_weights_stay_zero_through_adam_and_em() -> None:
    graph, params = _tied_blocks()
    module = _module(graph, params)
    x = torch.as_tensor(_data(graph, params, 64, seed=3))
    optimiser = torch.optim.AdamW(module.parameters(), lr=0.1, weight_decay=0.1)  # decay must not resurrect it
    for _ in range(5):
        optimiser.zero_grad()
        (-module(x).mean()).backward()
        optimiser.step()
    module.em_step(x, step=0.5, pseudocount=1.0)
    weights = module.to_parameters().weights["s"]
    assert weights[0, 0] == 0.0 and np.allclose(weights.sum(axis=1), 1.0, atol=ATOL)
    assert np.isfinite(module(x).detach().numpy()).all()


def test_em_step_is_the_em_update_of_the_backend_flows() -> None:
    graph, params = random_circuit(4, 5, real=True)
    x = _data(graph, params, 50, seed=4)
    module = _module(graph, params)
    expected = em_update(params, reference.flows(graph, params, x), 0.7, 0.3)
    mean_ll = module.em_step(torch.as_tensor(x), step=0.7, pseudocount=0.3)
    assert abs(mean_ll - reference.log_prob(graph, params, x).mean()) < ATOL
    got = module.to_parameters()
    for group, w in expected.weights.items():
        assert np.allclose(got.weights[group], w, atol=ATOL, rtol=0), group
    for node, p in expected.inputs.items():
        for k, v in p.items():
            assert np.allclose(got.inputs[node][k], v, atol=1e-7, rtol=0), (node, k)


def test_fixed_and_frozen_parameters_are_kept() -> None:
    graph, params = random_circuit(2, 4)
    group = next(iter(params.weights))
    params.fixed = frozenset({group})
    module = _module(graph, params)
    assert not module.weights[key(group)].requires_grad
    other = next(k for k, p in module.logits.items() if p.requires_grad)
    module.logits[other].requires_grad_(False)  # frozen by the user: EM keeps it too
    before = module.to_parameters()
    module.em_step(torch.as_tensor(_data(graph, params, 30, seed=5)))
    after = module.to_parameters()
    assert np.array_equal(after.weights[group], before.weights[group])
    kept, moved = after.inputs[group_name(other)], before.inputs[group_name(other)]
    assert all(np.array_equal(kept[k], moved[k]) for k in kept)
    assert any(not np.array_equal(after.weights[g], before.weights[g]) for g in after.weights if g != group)


def test_parameters_round_trip_and_queries_use_the_current_ones() -> None:
    graph, params = random_circuit(9, 5, real=True)
    module = _module(graph, params)
    got = module.to_parameters()
    for group, w in params.weights.items():
        assert np.allclose(got.weights[group], w, atol=1e-12)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    moved = module.to_parameters()
    model = pcdsl.compile(graph, params=moved, dtype="float64")
    x = _data(graph, params, 20, seed=6)
    assert np.allclose(module(torch.as_tensor(x)).detach().numpy(), model.log_prob(x), atol=ATOL)
    assert np.array_equal(module.sample(8, seed=3), model.sample(8, seed=3), equal_nan=True)
    assert np.allclose(module.map(x)[1], model.map(x)[1], atol=ATOL)
    assert plan_parameters(compile_plan(graph, moved)).weights.keys() == moved.weights.keys()


def test_names_that_torch_forbids_are_escaped() -> None:
    assert key("a.b") == "a%2Eb" and group_name("a%2Eb") == "a.b"
    assert key("train") == "@train" and group_name("@train") == "train"
    assert group_name(key("x%2E@.keys")) == "x%2E@.keys"
    g = CircuitGraph("names", (Variable("a", 0, CAT3), Variable("b", 1, CAT3)))
    g.add_input("pd/v1.in", 0, "categorical", 2)
    g.add_input("train", 1, "categorical", 2)
    g.add_product("p.1", ("pd/v1.in", "train"))
    g.add_sum("keys", ("p.1",), 1)
    module = _module(g, initialise(g, 0))
    assert sorted(name for name, _ in module.named_parameters()) == [
        "logits.@train", "logits.pd/v1%2Ein", "weights.@keys"]
    assert sorted(module.to_parameters().inputs) == ["pd/v1.in", "train"]


# ---- neural leaves: a network's outputs parameterise the circuit's leaves ----------------------

def _conditional_circuit() -> CircuitGraph:
    """A mixture of two products over four binary variables; leaves la, lb are neural."""
    variables = tuple(Variable(n, i, Domain("bool", 2)) for i, n in enumerate("abcd"))
    g = CircuitGraph("conditional", variables)
    for n, v in (("la", 0), ("lb", 1), ("lc", 2), ("ld", 3)):
        g.add_input(n, v, "bernoulli", 2)
    g.add_product("p", ("la", "lb", "lc", "ld"), "hadamard")
    g.add_sum("root", ("p",), 1)
    return g


class _Net(torch.nn.Module):  # type: ignore[misc]
    """Context features -> Bernoulli logits for each unit of the neural leaves la and lb."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 4, dtype=torch.float64)

    def forward(self, context, x):  # type: ignore[no-untyped-def]
        logits = self.layer(context).view(-1, 2, 2)  # (batch, leaf, unit)
        values = x[:, :2, None].expand(-1, -1, 2)
        ll = -torch.nn.functional.binary_cross_entropy_with_logits(logits, values, reduction="none")
        return {"la": ll[:, 0], "lb": ll[:, 1]}


def _conditional_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    a = (context[:, 0] > 0).double()
    b = (context[:, 1] + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64) > 0).double()
    rest = (torch.rand(n, 2, generator=gen, dtype=torch.float64) < 0.3).double()
    return context, torch.cat([a[:, None], b[:, None], rest], dim=1)


def test_neural_leaves_train_end_to_end_with_adam_and_match_finite_differences() -> None:
    graph = _conditional_circuit()
    params = initialise(graph, 0)
    circuit = _module(graph, params, leaves=("la", "lb"))
    net = _Net()
    context, x = _conditional_data(200, seed=0)

    def loss() -> torch.Tensor:
        return -circuit(x, leaves=net(context, x)).mean()

    loss().backward()
    weight = net.layer.weight
    for index in [(0, 0), (1, 2), (3, 1)]:
        with torch.no_grad():
            weight[index] += 1e-6
            up = float(loss())
            weight[index] -= 2e-6
            down = float(loss())
            weight[index] += 1e-6
        assert abs((up - down) / 2e-6 - float(weight.grad[index])) < 1e-7
    optimiser = torch.optim.Adam([*net.parameters(), *circuit.parameters()], lr=0.05)
    with torch.no_grad():
        first = float(loss())
    for _ in range(150):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
    with torch.no_grad():
        last = float(loss())
    # a and b follow the context, so the network can take most of their 2 log 2 nats; c and d
    # cost at least their entropy, 2 x 0.61 for Bernoulli(0.3)
    assert last < first - 0.5
    assert last < 1.22 + 0.6 * 2 * np.log(2)


def test_neural_leaf_values_are_checked() -> None:
    graph = _conditional_circuit()
    circuit = _module(graph, initialise(graph, 0), leaves=("la",))
    x = torch.zeros(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="need their log-likelihoods"):
        circuit(x)
    with pytest.raises(ValueError, match=r"give a \(batch, 2\) tensor"):
        circuit(x, leaves={"la": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="unknown"):
        circuit(x, leaves={"la": torch.zeros(3, 2), "zz": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match=r"must be input node groups of 'conditional': root is not"):
        _module(graph, initialise(graph, 0), leaves=("root",))
    with pytest.raises(ValueError, match="no neural leaves"):
        _module(graph, initialise(graph, 0))(x, leaves=torch.zeros(3, 2))


def test_bad_arguments_get_the_codes_of_every_query() -> None:
    """The module checks evidence like the backends' queries (a fraction is refused, not truncated)
    and refuses with InvalidArgument codes, as the rest of the API does."""
    from pcdsl.arguments import InvalidArgument

    graph = _conditional_circuit()
    circuit = _module(graph, initialise(graph, 0))
    for x, code in (([[0, 1, 0.5, 1]], "E0803"), ([[0, 1, 2, 1]], "E0804"), ([[0, 1, 1]], "E0805")):
        with pytest.raises(InvalidArgument) as info:
            circuit(torch.tensor(x, dtype=torch.float64))
        assert info.value.code == code, x
        with pytest.raises(InvalidArgument) as info:
            circuit.em_step(torch.tensor(x, dtype=torch.float64))
        assert info.value.code == code, x
    assert torch.isfinite(circuit(torch.tensor([[0, 1, -1, float("nan")]], dtype=torch.float64))).all()
    with pytest.raises(InvalidArgument) as info:
        _module(graph, initialise(graph, 0), leaves=("la", "la"))
    assert info.value.code == "E0806"
    with pytest.raises(InvalidArgument) as info:
        circuit.to(torch.float16)(torch.zeros(1, 4))
    assert info.value.code == "E0807"


def test_a_circuit_of_neural_leaves_only_needs_no_data() -> None:
    graph = _conditional_circuit()
    circuit = _module(graph, initialise(graph, 0), leaves=("la", "lb", "lc", "ld"))
    values = torch.log(torch.full((5, 8), 0.5, dtype=torch.float64))
    assert torch.allclose(circuit(leaves=values), torch.full((5,), 4 * np.log(0.5), dtype=torch.float64))


# ---- a circuit as a prior inside a larger module ----------------------------------------------

class _WithPrior(torch.nn.Module):  # type: ignore[misc]
    def __init__(self, prior: CircuitModule) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(4, 4)
        self.prior = prior

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.encoder(x).sum(dim=1) + self.prior(x)


def test_a_circuit_prior_inside_a_module_saves_and_loads_through_state_dict(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file, save_file

    graph, params = random_circuit(11, 4)
    x = torch.as_tensor(reference.sample(graph, params, 16, seed=0), dtype=torch.float32)
    trained = _WithPrior(pcdsl.compile(graph, params=params).module())  # type: ignore[attr-defined]
    optimiser = torch.optim.SGD(trained.parameters(), lr=0.1)
    for _ in range(3):
        optimiser.zero_grad()
        (-trained(x).mean()).backward()
        optimiser.step()
    save_file(trained.state_dict(), tmp_path / "model.safetensors")
    fresh = _WithPrior(pcdsl.compile(graph, seed=99).module())  # type: ignore[attr-defined]
    assert not torch.allclose(fresh(x), trained(x))
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert torch.equal(fresh(x), trained(x))
    assert any(name.startswith("prior.weights.") for name in trained.state_dict())


def test_to_device_and_dtype_rebuild_the_backend() -> None:
    graph, params = random_circuit(12, 4)
    module = pcdsl.compile(graph, params=params).module()  # type: ignore[attr-defined]
    x = reference.sample(graph, params, 10, seed=0)
    single = module(torch.as_tensor(x)).detach()
    assert single.dtype == torch.float32 and "float32 on cpu" in repr(module)
    double = module.to(torch.float64)(torch.as_tensor(x)).detach()
    assert double.dtype == torch.float64
    assert np.allclose(double.numpy(), reference.log_prob(graph, params, x), atol=ATOL)
    assert np.allclose(single.numpy(), double.numpy(), atol=1e-5)
    if torch.cuda.is_available():
        on_gpu = module.to("cuda")(torch.as_tensor(x)).detach().cpu()
        assert np.allclose(on_gpu.numpy(), double.numpy(), atol=ATOL)


def test_runs_under_torch_compile() -> None:
    graph, params = random_circuit(13, 4)
    x = torch.as_tensor(reference.sample(graph, params, 12, seed=0))
    module = _module(graph, params)
    compiled = torch.compile(module, backend="eager")  # dynamo's tracing; inductor in the slow test
    assert torch.allclose(compiled(x), module(x), atol=ATOL)
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in module.parameters())


@pytest.mark.slow
def test_runs_under_torch_compile_with_inductor() -> None:
    graph, params = random_circuit(14, 4)
    x = torch.as_tensor(reference.sample(graph, params, 12, seed=0))
    module = _module(graph, params)
    expected = module(x)
    expected.sum().backward()
    grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    compiled = torch.compile(module)
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, expected, atol=ATOL)
    assert all(torch.allclose(p.grad, g, atol=ATOL) for p, g in zip(module.parameters(), grads, strict=True))


def test_rows_of_probability_zero_get_gradient_zero() -> None:
    graph, params = _tied_blocks()
    params.inputs["ld"]["probs"][:, 2] = 0.0  # d = 2 is impossible
    params.inputs["ld"]["probs"] /= params.inputs["ld"]["probs"].sum(axis=1, keepdims=True)
    x = _data(graph, params, 20, seed=8)
    impossible = np.vstack([x, [[0, 1, 2, 2]]])
    module = _module(graph, params)
    lp = module(torch.as_tensor(impossible))
    assert lp[-1] == -np.inf and torch.isfinite(lp[:-1]).all()
    lp.sum().backward()
    with_zero = {name: p.grad.clone() for name, p in module.named_parameters()}
    module.zero_grad()
    module(torch.as_tensor(x)).sum().backward()
    for name, p in module.named_parameters():
        assert torch.isfinite(with_zero[name]).all() and torch.allclose(with_zero[name], p.grad, atol=ATOL), name
