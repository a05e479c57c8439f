"""What three torch-backend changes would gain, measured by monkeypatching a compiled model in
this process only (the backend's files are not touched). Prints a Markdown table of samples/s,
forward / forward+flows: as is; (1) categorical inputs: gather straight into the buffer
(`torch.gather(..., out=)`, no `torch.where` when nothing is missing) and input flows by
`scatter_add_` along the category axis instead of masked `index_add_`; (1)+(2) a reused (slots, B)
forward buffer. Then (3): a sum layer's `log(W @ exp(x - m)) + m` over HCLT shapes, whole vs
tiled over folds (chunks that stay in cache). Patches follow the backend as of 2026-11-26 and
may need updating when it changes.

    .venv/bin/python benchmarks/whatif_backend.py
"""
import sys, time, statistics, types, torch, numpy as np
import os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); sys.argv = ["x"]
import bench_speed as bs
import pcdsl
from pcdsl.plan import ONE, ZERO
from pcdsl.backends.torch import InputRule
from pcdsl.reference import Flows
torch.set_num_threads(2)
x_all, _ = bs.load_images(2000); xb = torch.from_numpy(x_all[:512].astype(np.int64))
edges, _ = bs.tree_edges(x_all)
def med(fn, n=5):
    fn(); ts=[]
    for _ in range(n):
        t=time.perf_counter(); fn(); ts.append(time.perf_counter()-t)
    return statistics.median(ts)
def patch_inputs(m):
    for r in m.rules:
        if isinstance(r, InputRule) and r.layer.family == "categorical":
            orig_fwd, orig_flows = r.forward, r.flows
            def fwd(buf, batch, mode, r=r, orig=orig_fwd):
                if mode != "sum" or bool(batch.missing.any()):
                    return orig(buf, batch, mode)
                G, w = r.grid.shape[0], r.width
                idx = batch.index[r.group_var][:, None, :].expand(-1, w, -1)
                torch.gather(r.grid, 2, idx, out=buf[r.start:r.stop].view(G, w, -1))
            def flows(buf, flow, batch, r=r, orig=orig_flows):
                if bool(batch.missing.any()):
                    return orig(buf, flow, batch)
                G, w, K = r.grid.shape
                f = flow[r.start:r.stop].view(G, w, -1)
                counts = torch.zeros(G, w, K, dtype=f.dtype)
                counts.scatter_add_(2, batch.index[r.group_var][:, None, :].expand(-1, w, -1), f)
                return {"counts": counts.view(G * w, K)}
            r.forward, r.flows = fwd, flows
def patch_workspace(m):
    ws = {}
    def get(key, dtype):
        t = ws.get(key)
        if t is None:
            t = ws[key] = torch.empty(*key[1:], dtype=dtype)
        return t
    def _forward(self, batch, mode="sum"):
        buf = get(("buf", self.plan.num_slots, batch.index.shape[1]), self.dtype)
        buf[ONE], buf[ZERO] = 0.0, -torch.inf
        with torch.no_grad():
            for rule in self.rules:
                rule.forward(buf, batch, mode)
        return buf
    m._forward = types.MethodType(_forward, m)
    return ws
print("| structure | K | as is | (1) inputs | (1)+(2) workspace | max abs diff lp / counts |")
print("|---|---:|---:|---:|---:|---|")
for struct, K in (("hclt", 16), ("hclt", 32), ("quad_tree", 16), ("quad_tree", 32)):
    g = bs.build(struct, K, edges if struct=="hclt" else None)
    m = pcdsl.compile(g, dtype="float32")
    ref_lp = m.log_prob(xb).clone(); ref_fl = m.flows(xb)
    b_f, b_b = med(lambda: m.log_prob(xb)), med(lambda: m.flows(xb))
    patch_inputs(m)
    lp = m.log_prob(xb); fl = m.flows(xb)
    err_lp = (lp - ref_lp).abs().max().item()
    err_fl = max((fl.inputs[k]["counts"] - ref_fl.inputs[k]["counts"]).abs().max().item() for k in list(ref_fl.inputs)[:50])
    i_f, i_b = med(lambda: m.log_prob(xb)), med(lambda: m.flows(xb))
    patch_workspace(m)
    w_f, w_b = med(lambda: m.log_prob(xb)), med(lambda: m.flows(xb))
    sps = lambda t: f"{512/t:,.0f}"
    print(f"| {struct} | {K} | {sps(b_f)} / {sps(b_b)} | {sps(i_f)} / {sps(i_b)} | {sps(w_f)} / {sps(w_b)} | {err_lp:.1e} / {err_fl:.1e} |", flush=True)


# (3) one HCLT-shaped sum layer (783 folds of K x K, batch 512): whole vs tiled over folds
def bench(fn, reps=9):
    fn(); fn(); ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


print()
B=512
for K in (16, 32):
    F=783; C=M=K
    buf = torch.randn(F*K*3, B)
    flat = torch.arange(F*C) * 2 % (F*K*3)   # strided but ordered rows, like a plan
    W = torch.softmax(torch.randn(F, M, C), 2)
    out = torch.empty(F, M, B)
    def full():
        x = buf.index_select(0, flat).view(F, C, B)
        m = x.amax(dim=1, keepdim=True)
        torch.bmm(W, x.sub_(m).exp_(), out=out); out.log_().add_(m)
    ref = None
    def tiled(fc):
        def run():
            for lo in range(0, F, fc):
                hi = min(F, lo+fc)
                x = buf.index_select(0, flat[lo*C:hi*C]).view(hi-lo, C, B)
                m = x.amax(dim=1, keepdim=True)
                o = out[lo:hi]
                torch.bmm(W[lo:hi], x.sub_(m).exp_(), out=o); o.log_().add_(m)
        return run
    full(); r0 = out.clone()
    print(f"K={K} untiled {bench(full):.2f} ms")
    for fc in (8, 16, 32, 64, 128):
        t = bench(tiled(fc)); err=(out-r0).abs().max().item()
        print(f"K={K} tiled folds/chunk={fc:4d} ({fc*C*B*4/2**20:.2f} MiB) {t:.2f} ms err {err:.1e}")
