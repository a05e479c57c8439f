"""The queries of the emitted torch module beyond log p(x): conditional, MAP, sampling and flows,
as source templates that ``emit.py`` fills in per layer (placeholders in upper case are replaced by
AST nodes, never by string formatting).

The emitted module answers the queries of the emitted numba package (``runtime.Circuit``) with the
same semantics as the in-memory backends: ``conditional(x, query)``, ``map(x)`` (max-product and
backtracking), ``sample(n, evidence=None, seed=0)`` (one evidence row gives n samples, n rows one
each), and ``flows(x)`` (expected sufficient statistics, summed over the batch, keyed by the layer
tensors they belong to). Each layer gets three generated methods: ``layer<i>`` (forward, sum or
max), ``down<i>`` (top-down choice for MAP and sampling) and ``flows<i>`` (top-down expected
counts). Flows are computed edge by edge in float64 (a (batch, folds, units, inputs) temporary per
sum layer): simple and exact rather than fast.
"""

from __future__ import annotations

# Methods added to the emitted class, layer-independent.
RUNTIME = '''
class _Queries:
    def conditional(self, x, query):
        """log p(x_Q | x_E): Q the query variables (names, indices or a boolean mask), E the other
        observed ones. NaN where p(x_E) = 0."""
        full = self._rows(x)
        evidence = full.clone()
        columns = self._columns(query)
        evidence[:, columns] = torch.where(self.discrete[columns], -1.0, torch.nan).to(evidence.dtype)
        return self._like(self.log_prob(full) - self.log_prob(evidence), x)

    def map(self, x):
        """(completion, its log p): missing entries completed by max-product and backtracking.
        Rows whose evidence has probability zero get NaN (-1 in integer results) and log p = -inf."""
        completed = self._down(self._rows(x), "map", None)
        return self._like(self._typed(completed), x), self._like(self.log_prob(completed), x)

    def sample(self, n, evidence=None, seed=0):
        """n ancestral samples; with evidence (one row: n samples from it; n rows: one each), from
        p(missing | observed). Where the evidence has probability zero, the missing entries are NaN."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a whole number >= 0, found {n!r}")
        if evidence is None:
            rows = torch.full((n, len(VARIABLES)), torch.nan, dtype=torch.float64, device=self.card.device)
        else:
            rows = self._rows(evidence)
            if len(rows) not in (1, n):
                raise ValueError(f"evidence has {len(rows)} rows, but n = {n}: give one row (n samples from it) "
                                 "or n rows (one sample each)")
            rows = rows.expand(n, -1).clone() if len(rows) == 1 else rows
        gen = torch.Generator(device=self.card.device)
        gen.manual_seed(int(seed))
        return self._like(self._typed(self._down(rows, "sample", gen)), evidence)

    @torch.no_grad()
    def flows(self, x):
        """Expected sufficient statistics, summed over the batch: ``layer<i>_weights`` (folds, units,
        inputs) edge flows of every sum layer, ``layer<i>_counts`` (rows, categories) of every
        categorical input layer (a missing value counts probs * flow), ``layer<i>_n``, ``_dx``, ``_dxx``
        of every Gaussian one (centred on the mean; a missing value counts 0 and std^2); and
        ``log_likelihood``, the batch's summed log-likelihood."""
        rows = self._rows(x)
        buf, category, real, missing = self._values(rows, "sum")
        flow = torch.zeros(buf.shape, dtype=torch.float64, device=buf.device)
        flow[:, ROOT] = 1.0
        result = {"log_likelihood": float(buf[:, ROOT].to(torch.float64).sum())}
        result.update(self._flows(buf, flow, category, real, missing))
        if not isinstance(x, torch.Tensor):
            result = {k: v if isinstance(v, float) else v.cpu().numpy() for k, v in result.items()}
        return result

    @torch.no_grad()
    def _down(self, rows, mode, gen):
        buf, category, real, missing = self._values(rows, "max" if mode == "map" else "sum")
        active = torch.zeros(buf.shape, dtype=buf.dtype, device=buf.device)
        active[:, ROOT] = 1.0
        out = real.clone()
        self._downs(active, buf, out, missing, mode, gen)
        impossible = buf[:, ROOT] == -math.inf  # evidence of probability zero has no completion
        out[impossible[:, None] & missing] = torch.nan
        return out

    def _rows(self, x):
        t = torch.as_tensor(x, device=self.card.device).to(torch.float64)
        return t[None, :] if t.ndim == 1 else t

    def _columns(self, query):
        q = query.detach().cpu().numpy() if isinstance(query, torch.Tensor) else query
        q = [q] if isinstance(q, str) else list(q) if not hasattr(q, "dtype") else q
        if hasattr(q, "dtype") and str(q.dtype) == "bool":
            return torch.nonzero(torch.as_tensor(q)).reshape(-1).to(self.card.device)
        names = {name: i for i, name in enumerate(VARIABLES)}
        picked = []
        for item in q:
            if isinstance(item, str) and item not in names:
                raise ValueError(f"query names no variable {item!r} (variables: {', '.join(VARIABLES[:8])})")
            picked.append(names[item] if isinstance(item, str) else int(item))
        bad = [i for i in picked if not 0 <= i < len(VARIABLES)]
        if bad:
            raise ValueError(f"query index {bad[0]} is outside 0..{len(VARIABLES) - 1}")
        return torch.as_tensor(picked, dtype=torch.long, device=self.card.device)

    def _typed(self, out):
        """Integers (int64; -1 where undefined) when every variable is discrete."""
        if all(c is not None for c in CARDINALITIES):
            return torch.nan_to_num(out, nan=-1.0).to(torch.int64)
        return out

    @staticmethod
    def _like(result, like):
        return result if isinstance(like, torch.Tensor) else result.detach().cpu().numpy()

    @staticmethod
    def _gumbel(like, gen):
        u = torch.rand(like.shape, generator=gen, device=like.device, dtype=like.dtype)
        tiny = torch.finfo(like.dtype).tiny
        return -torch.log((-torch.log(u.clamp_min(tiny))).clamp_min(tiny))
'''

# ---- per-layer templates ---------------------------------------------------------------------
CATEGORICAL = """
var = VAR
table = LOG_PROBS
observed = table.reshape(-1)[ROWS * table.shape[1] + category[:, var]]
free = table.amax(dim=1)[ROWS] if mode == "max" else observed.new_zeros(observed.shape[1:])
return torch.where(missing[:, var], free.expand_as(observed), observed)
"""

GAUSSIAN = """
var = VAR
std = STD[ROWS].to(torch.float64)
z = (real[:, var] - MEAN[ROWS].to(torch.float64)) / std
observed = -0.5 * z * z - torch.log(std) - LOG_SQRT_2PI
free = -torch.log(std) - LOG_SQRT_2PI if mode == "max" else torch.zeros_like(std)
return torch.where(missing[:, var], free.expand_as(observed), observed)
"""

SUM = """
inputs = buf[:, INDEX]
if mode == "max":
    value = (torch.log(WEIGHTS)[None] + inputs[:, :, None, :]).amax(dim=3)
else:
    m = inputs.amax(dim=2, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.bmm(torch.exp(inputs - m).transpose(0, 1), WEIGHTS.transpose(1, 2)).transpose(0, 1)
    value = torch.log(s) + m
    lost = s < (2.0 ** -100 if s.dtype == torch.float32 else 2.0 ** -960)
    if bool(lost.any()):
        b, f, u = lost.nonzero(as_tuple=True)
        value[b, f, u] = torch.logsumexp(torch.log(WEIGHTS[f, u]) + inputs[b, f], dim=1)
buf[:, START:STOP] = value.reshape(buf.shape[0], -1)
"""

DOWN_CATEGORICAL = """
pick = (active[:, START:STOP] > 0) & missing[:, VAR]
b, u = pick.nonzero(as_tuple=True)
if b.numel():
    lp = LOG_PROBS[ROWS[u]].to(torch.float64)
    if mode == "sample":
        lp = lp + self._gumbel(lp, gen)
    out[b, VAR[u]] = lp.argmax(dim=1).to(out.dtype)
"""

DOWN_GAUSSIAN = """
pick = (active[:, START:STOP] > 0) & missing[:, VAR]
b, u = pick.nonzero(as_tuple=True)
if b.numel():
    value = MEAN[ROWS[u]].to(torch.float64)
    if mode == "sample":
        noise = torch.randn(value.shape, generator=gen, dtype=torch.float64, device=value.device)
        value = value + STD[ROWS[u]].to(torch.float64) * noise
    out[b, VAR[u]] = value.to(out.dtype)
"""

DOWN_PRODUCT = """
parent = active[:, START:STOP].clone()
for column in INDEX.T:
    active.index_add_(1, column, parent)
"""

DOWN_SUM = """
a = active[:, START:STOP].reshape(active.shape[0], FOLDS, UNITS) > 0
unit = a.to(torch.uint8).argmax(dim=2)
fold = torch.arange(FOLDS, device=a.device)[None, :].expand_as(unit)
scores = torch.log(WEIGHTS.to(torch.float64))[fold, unit] + buf[:, INDEX].to(torch.float64)
if mode == "sample":
    scores = scores + self._gumbel(scores, gen)
slot = INDEX[fold, scores.argmax(dim=2)]
active.scatter_add_(1, slot, a.any(dim=2).to(active.dtype))
"""

FLOWS_CATEGORICAL = """
f = flow[:, START:STOP]
miss = missing[:, VAR]
table = LOG_PROBS.to(torch.float64)
counts = torch.zeros(table.shape, dtype=torch.float64, device=f.device)
observed = torch.where(miss, torch.zeros_like(f), f)
counts.index_put_((ROWS.expand_as(f), category[:, VAR]), observed, accumulate=True)
missed = torch.where(miss, f, torch.zeros_like(f)).sum(dim=0)
per_row = torch.zeros(table.shape[0], dtype=torch.float64, device=f.device).index_add_(0, ROWS, missed)
counts += per_row[:, None] * torch.exp(table)
return {COUNTS: counts}
"""

FLOWS_GAUSSIAN = """
f = flow[:, START:STOP]
miss = missing[:, VAR]
std = STD[ROWS].to(torch.float64)
d = torch.where(miss, torch.zeros_like(f), real[:, VAR] - MEAN[ROWS].to(torch.float64))
dd = torch.where(miss, (std * std).expand_as(f), d * d)
rows = torch.zeros(MEAN.shape[0], dtype=torch.float64, device=f.device)
n = rows.index_add(0, ROWS, f.sum(dim=0))
return {N: n, DX: rows.index_add(0, ROWS, (f * d).sum(dim=0)), DXX: rows.index_add(0, ROWS, (f * dd).sum(dim=0))}
"""

FLOWS_PRODUCT = """
parent = flow[:, START:STOP].clone()
for column in INDEX.T:
    flow.index_add_(1, column, parent)
return {}
"""

FLOWS_SUM = """
batch = buf.shape[0]
value = buf[:, START:STOP].reshape(batch, FOLDS, UNITS).to(torch.float64)
inputs = buf[:, INDEX].to(torch.float64)
parent = flow[:, START:STOP].reshape(batch, FOLDS, UNITS)
live = (parent > 0) & torch.isfinite(value)
ratio = torch.exp(torch.log(WEIGHTS.to(torch.float64))[None] + inputs[:, :, None, :] - value[..., None])
edge = torch.where(live[..., None], parent[..., None] * ratio, torch.zeros_like(ratio))
flow.index_add_(1, INDEX.reshape(-1), edge.sum(dim=2).reshape(batch, -1))
return {WEIGHT_FLOWS: edge.sum(dim=0)}
"""
