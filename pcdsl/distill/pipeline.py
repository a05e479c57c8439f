"""A distillation recipe, run stage by stage in a run directory that caches every stage.

Stages, in order (each writes its outputs atomically and records its key in ``stages.json``;
a stage whose key and files are there is not run again, so a stopped run resumes, and a changed
recipe entry re-runs exactly the stages that depend on it):

1. ``teacher``: train the teacher on the training images -> ``teacher.safetensors``;
2. ``latents``: teacher features of every patch, k-means, hard assignments z (and progressive
   growing when the recipe asks) -> ``latents.npz``;
3. ``patches``: counting initialisation and cluster-conditioned EM of the patch circuits ->
   ``patches.safetensors`` (one training circuit, or ``patches-{i}`` per position unshared);
4. ``top``: the HCLT over the latents, EM on z -> ``latent.safetensors``;
5. ``distilled``: compose, EM on exact soft evidence (top level), then the recipe's EM stages on
   all parameters -> ``model.safetensors``, an ordinary native model file;
6. ``report``: ``report.json`` (teacher bpd, LVD bound, exact bpd, sizes, times, memory),
   ``samples.png``, ``inpaint.png``.

EM stages checkpoint after every epoch (``{stage}.ckpt.safetensors`` + ``{stage}.json``), so
a run killed mid-stage resumes at its last finished epoch.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcdsl.distill import lvd
from pcdsl.distill.compose import PatchShape, block_family, compose, top_parameter_groups, training_circuit
from pcdsl.distill.recipe import Distillation, cropped
from pcdsl.io.atomic import write_atomic
from pcdsl.io.model import load_model, save_model
from pcdsl.ir.graph import CircuitGraph, Domain, Variable
from pcdsl.learn.train import Epoch
from pcdsl.params import Parameters

Log = Callable[[str], object]


def _key(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _write_json(path: Path, value: Any) -> None:
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


@dataclass
class RunDir:
    """The run directory: stage keys, cached outputs and per-epoch checkpoints."""

    path: Path
    log: Log = print
    keys: dict[str, str] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        state = self.path / "stages.json"
        if state.exists():
            saved = json.loads(state.read_text())
            self.keys, self.times = saved.get("keys", {}), saved.get("seconds", {})

    def fresh(self, stage: str, key: str, *files: str) -> bool:
        """Whether `stage` already ran with `key` and its files are all there."""
        done = self.keys.get(stage) == key and all((self.path / f).exists() for f in files)
        if done:
            self.log(f"{stage}: cached ({', '.join(files)})")
        return done

    def finish(self, stage: str, key: str, seconds: float) -> None:
        self.keys[stage] = key
        self.times[stage] = self.times.get(stage, 0.0) + seconds
        _write_json(self.path / "stages.json", {"keys": self.keys, "seconds": self.times})

    def fit(self, stage: str, key: str, graph: CircuitGraph,
            train: Callable[[lvd.Resume], Parameters]) -> Parameters:
        """Run an EM fit that checkpoints after every epoch (its parameters, the best ones and
        how far it got) and resumes from its checkpoint to the same result."""
        ckpt, best_file = self.path / f"{stage}.ckpt.safetensors", self.path / f"{stage}.best.safetensors"
        state, history = self.path / f"{stage}.json", self.path / f"{stage}.metrics.jsonl"
        resume = lvd.Resume()
        if ckpt.exists() and state.exists():
            saved = json.loads(state.read_text())
            if saved.get("key") == key:
                best = (float(saved["best"]), load_model(best_file)[1]) if saved.get("best") is not None else None
                resume = lvd.Resume(load_model(ckpt)[1], int(saved["epochs_done"]), best)
                self.log(f"{stage}: resuming after {resume.epochs} epochs")
        if resume.epochs == 0 and history.exists():
            history.unlink()
        done = resume.epochs

        def on_epoch(epoch: Epoch, current: Parameters, best: tuple[float, Parameters] | None) -> None:
            nonlocal done
            done += 1
            with open(history, "a") as f:
                f.write(json.dumps(epoch.as_dict(), sort_keys=True) + "\n")
            save_model(ckpt, graph, current)
            if best is not None and best[1] is current:
                save_model(best_file, graph, current)
            _write_json(state, {"key": key, "epochs_done": done, "best": None if best is None else best[0]})
            valid = f", valid {epoch.valid_ll:.4f}" if epoch.valid_ll is not None else ""
            self.log(f"{stage}: stage {epoch.stage + 1} epoch {epoch.epoch + 1}: train {epoch.train_ll:.4f}{valid}")

        return train(lvd.Resume(resume.params, resume.epochs, resume.best, on_epoch))


@dataclass
class Data:
    """The images of every split (after the colour transform) and what describes them."""

    train: np.ndarray
    valid: np.ndarray | None
    test: np.ndarray | None
    levels: tuple[int, ...]  # per channel

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.train.shape[1:]  # type: ignore[return-value]


def load_data(recipe: Distillation) -> Data:
    from pcdsl.data import DataError
    from pcdsl.distill.images import load_images, transform

    source = recipe.source
    splits: dict[str, np.ndarray | None] = {}
    for split in ("train", "valid", "test"):
        try:
            images = load_images(source.kind, source.args, source.base_dir, split)
        except DataError:
            if split == "train":
                raise
            images = None
        splits[split] = images
    levels: tuple[int, ...] = ()
    out = {}
    for split, images in splits.items():
        if images is not None:
            out[split], levels = transform(recipe.transform, cropped(images, recipe.crop))
    return Data(out["train"], out.get("valid"), out.get("test"), levels)


def _dim_levels(data: Data, grid: Any) -> tuple[int, ...]:
    """The levels of each value of a patch vector (channels are adjacent inside a patch)."""
    return tuple(data.levels[j % data.shape[2]] for j in range(grid.dims))


def _flat(images: np.ndarray | None) -> np.ndarray | None:
    return None if images is None else images.reshape(len(images), -1).astype(np.float64)


class DistillError(Exception):
    """A distillation recipe that cannot run on what it was given; the message says why."""


def run_distillation(recipe: Distillation, out_dir: Path, *, backend: str = "numba", device: str = "cpu",
                     dtype: str = "float32", seed: int = 0, progress: bool = True, log: Log = print) -> dict[str, Any]:
    """Run (or resume) a distillation recipe; returns the report."""
    from pcdsl.data import DataError
    from pcdsl.distill.images import PatchError
    from pcdsl.distill.teachers import TeacherError

    try:
        return _run(recipe, out_dir, backend, device, dtype, seed, progress, log)
    except (DataError, PatchError, TeacherError) as exc:  # bad data or options the checks could not see
        raise DistillError(str(exc)) from None


def _run(recipe: Distillation, out_dir: Path, backend: str, device: str, dtype: str, seed: int, progress: bool,
         log: Log) -> dict[str, Any]:
    from pcdsl.distill.images import PatchGrid

    if recipe.grow is not None:
        raise DistillError("progressive growing (`latents = kmeans(...) | grow(...)`) is not built yet: "
                           "remove `| grow(...)` to run plain LVD")
    run = RunDir(out_dir, log)
    data = load_data(recipe)
    grid = PatchGrid(data.shape, recipe.patch)
    dim_levels = _dim_levels(data, grid)
    base = _key(recipe.data_key, recipe.transform, recipe.crop, recipe.patch, seed)
    fit = lvd.Fit((), backend, dtype, device, seed, progress)

    teacher, teacher_key = _teacher(run, recipe, data, grid, base, progress, log)
    z, latents_key = _latents(run, recipe, data, grid, teacher, teacher_key)
    shape, patch_params, patch_key = _patches(run, recipe, data, grid, z, dim_levels, latents_key, fit)
    top, top_params, top_key = _top(run, recipe, grid, z, latents_key, fit)
    graph, params = _distilled(run, recipe, data, grid, shape, patch_params, top, top_params,
                               _key(patch_key, top_key), fit)
    return _report(run, recipe, data, grid, teacher, z, shape, dim_levels, patch_params, top, top_params,
                   graph, params, fit)


def _timed(run: RunDir, stage: str, key: str, work: Callable[[], None]) -> None:
    started = time.perf_counter()
    work()
    run.finish(stage, key, time.perf_counter() - started)


def _teacher(run: RunDir, recipe: Distillation, data: Data, grid: Any, base: str, progress: bool,
             log: Log) -> tuple[Any, str]:
    from pcdsl.distill.teachers import load_teacher, make_teacher, save_teacher

    kind, options = recipe.teacher
    key = _key(base, kind, sorted(options.items()))
    args = (kind, options, data.shape, recipe.patch, data.levels)
    if run.fresh("teacher", key, "teacher.safetensors"):
        return load_teacher(run.path / "teacher.safetensors", *args), key
    teacher = make_teacher(*args)

    def work() -> None:
        log(f"teacher: training {kind} on {len(data.train)} images")
        teacher.fit(data.train, data.valid, progress=progress, log=log)
        save_teacher(run.path / "teacher.safetensors", teacher)

    _timed(run, "teacher", key, work)
    return teacher, key


def _latents(run: RunDir, recipe: Distillation, data: Data, grid: Any, teacher: Any,
             teacher_key: str) -> tuple[dict[str, np.ndarray], str]:
    from pcdsl.distill.latents import assign, kmeans

    key = _key(teacher_key, sorted(recipe.kmeans.items()), sorted((recipe.grow or {}).items()))
    if run.fresh("latents", key, "latents.npz"):
        with np.load(run.path / "latents.npz", allow_pickle=False) as saved:
            return {k: saved[k] for k in saved.files}, key
    out: dict[str, np.ndarray] = {}

    def work() -> None:
        features = teacher.features(data.train)
        n, p, d = features.shape
        run.log(f"latents: k-means with {recipe.kmeans['clusters']} clusters on {n * p} patch features")
        centroids = kmeans(features.reshape(n * p, d), recipe.kmeans["clusters"], recipe.kmeans["seed"],
                           recipe.kmeans["iterations"])
        out["centroids"] = centroids
        out["train"] = assign(features.reshape(n * p, d), centroids).reshape(n, p)
        for split in ("valid", "test"):
            images = getattr(data, split)
            if images is not None:
                f = teacher.features(images)
                out[split] = assign(f.reshape(-1, d), centroids).reshape(len(images), p)
        _save_npz(run.path / "latents.npz", out)

    _timed(run, "latents", key, work)
    return out, key


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def _patches(run: RunDir, recipe: Distillation, data: Data, grid: Any, z: dict[str, np.ndarray],
             dim_levels: tuple[int, ...], latents_key: str, fit: lvd.Fit) -> tuple[PatchShape, list[Parameters], str]:
    patches = grid.to_patches(data.train)
    valid = grid.to_patches(data.valid) if data.valid is not None else None
    clusters = int(z["centroids"].shape[0])
    pc = recipe.patch_pc
    key = _key(latents_key, sorted(pc.items()), recipe.counting, recipe.patch_em)
    shape = lvd.patch_shape(patches.reshape(-1, grid.dims), dim_levels, pc["hidden"], clusters,
                            pc["kind"] == "fully_factorized", seed=fit.seed)
    positions = [None] if pc["shared"] else list(range(grid.count))
    files = ["patches.safetensors"] if pc["shared"] else [f"patches-{i}.safetensors" for i in positions]
    if run.fresh("patches", key, *files):
        return shape, [load_model(run.path / f)[1] for f in files], key
    patch_fit = lvd.Fit(recipe.patch_em, fit.backend, fit.dtype, fit.device, fit.seed, fit.progress)
    result: list[Parameters] = []

    def work() -> None:
        for i, name in zip(positions, files, strict=True):
            cut = slice(None) if i is None else slice(i, i + 1)
            rows = lvd.patch_rows(patches[:, cut], z["train"][:, cut])
            valid_rows = None if valid is None else lvd.patch_rows(valid[:, cut], z["valid"][:, cut])
            stage = name.removesuffix(".safetensors")
            graph = training_circuit(block_family(shape, dim_levels))
            params = run.fit(stage, _key(key, stage), graph, lambda resume, r=rows, v=valid_rows: lvd.fit_patches(
                shape, dim_levels, r, v, recipe.counting, patch_fit, resume)[1])
            save_model(run.path / name, graph, params)
            result.append(params)

    _timed(run, "patches", key, work)
    return shape, result, key


def _top(run: RunDir, recipe: Distillation, grid: Any, z: dict[str, np.ndarray], latents_key: str,
         fit: lvd.Fit) -> tuple[CircuitGraph, Parameters, str]:
    model = recipe.model
    key = _key(latents_key, sorted(model.items()), recipe.latent_em)
    clusters = int(z["centroids"].shape[0])
    graph = lvd.latent_circuit(grid.count, clusters, z["train"], model["hidden"], model["trees"], model["pseudocount"])
    if run.fresh("top", key, "latent.safetensors"):
        return graph, load_model(run.path / "latent.safetensors")[1], key
    top_fit = lvd.Fit(recipe.latent_em, fit.backend, fit.dtype, fit.device, fit.seed, fit.progress)
    out: dict[str, Parameters] = {}

    def work() -> None:
        out["params"] = run.fit("top", key, graph, lambda resume: lvd.fit_latents(
            graph, z["train"], z.get("valid"), top_fit, resume))
        save_model(run.path / "latent.safetensors", graph, out["params"])

    _timed(run, "top", key, work)
    return graph, out["params"], key


def image_variables(shape: tuple[int, int, int], levels: tuple[int, ...]) -> tuple[Variable, ...]:
    """The variables of an image model, ``x[r, c]`` (greyscale) or ``x[r, c, ch]``, row-major."""
    h, w, c = shape
    out = []
    for r in range(h):
        for col in range(w):
            for ch in range(c):
                name = f"x[{r}, {col}]" if c == 1 else f"x[{r}, {col}, {ch}]"
                out.append(Variable(name, len(out), Domain("categorical", int(levels[ch]))))
    return tuple(out)


def _distilled(run: RunDir, recipe: Distillation, data: Data, grid: Any, shape: PatchShape,
               patch_params: list[Parameters], top: CircuitGraph, top_params: Parameters, key: str,
               fit: lvd.Fit) -> tuple[CircuitGraph, Parameters]:
    key = _key(key, recipe.top_em, recipe.em)
    positions = [grid.pixel_columns(i) for i in range(grid.count)]
    graph, params = compose(top, top_params, block_family(shape, _dim_levels(data, grid)), patch_params,
                            image_variables(data.shape, data.levels), positions, recipe.patch_pc["shared"], recipe.name)
    if run.fresh("distilled", key, "model.safetensors"):
        return graph, load_model(run.path / "model.safetensors")[1]
    train, valid = _flat(data.train), _flat(data.valid)
    assert train is not None
    out: dict[str, Parameters] = {"params": params}

    def work() -> None:
        for stage, stages, learn in (("top_em", recipe.top_em, top_parameter_groups(graph)), ("em", recipe.em, None)):
            if not stages:
                continue
            stage_fit = lvd.Fit(stages, fit.backend, fit.dtype, fit.device, fit.seed, fit.progress)
            start = out["params"]
            out["params"] = run.fit(stage, _key(key, stage), graph, lambda resume, s=stage_fit, g=learn, p=start:
                                    lvd.fit_distilled(graph, p, train, valid, s, g, resume))
        save_model(run.path / "model.safetensors", graph, out["params"])

    _timed(run, "distilled", key, work)
    return graph, out["params"]


def _bpd(ll: float, dims: int) -> float:
    return -ll / (dims * np.log(2))


def _report(run: RunDir, recipe: Distillation, data: Data, grid: Any, teacher: Any, z: dict[str, np.ndarray],
            shape: PatchShape, dim_levels: tuple[int, ...], patch_params: list[Parameters], top: CircuitGraph,
            top_params: Parameters, graph: CircuitGraph, params: Parameters, fit: lvd.Fit) -> dict[str, Any]:
    from pcdsl.learn.train import mean_ll

    model = fit.compile(graph, params)
    dims = int(np.prod(data.shape))
    report: dict[str, Any] = {"recipe": recipe.name, "node_groups": len(graph), "edges": graph.num_edges(),
                              "parameters": graph.num_parameters(), "clusters": int(z["centroids"].shape[0]),
                              "patches": grid.count, "patch_dims": grid.dims, "transform": recipe.transform}
    for split in recipe.bpd_splits:
        images = getattr(data, split)
        if images is None:
            continue
        flat = _flat(images)
        assert flat is not None
        ll = mean_ll(model, flat)
        report[f"{split}_loglik"], report[f"{split}_bpd"] = ll, _bpd(ll, dims)
        bpd = teacher.bpd(images)
        if bpd is not None:
            report[f"teacher_{split}_bpd"] = float(bpd)
        if split in z:
            latent = fit.compile(top, top_params)
            patch_model = fit.compile(training_circuit(block_family(shape, dim_levels)), patch_params[0])
            if len(patch_params) == 1:
                bound = lvd.lvd_bound(latent, z[split], patch_model, lvd.patch_rows(grid.to_patches(images), z[split]))
                report[f"lvd_bound_{split}_bpd"] = _bpd(float(bound.mean()), dims)
    _pictures(run, recipe, data, grid, model, report)
    report["seconds"] = dict(run.times)
    report["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _write_json(run.path / "report.json", report)
    return report


def _pictures(run: RunDir, recipe: Distillation, data: Data, grid: Any, model: Any, report: dict[str, Any]) -> None:
    from pcdsl.distill.images import inverse, write_png_grid

    def images(values: np.ndarray) -> np.ndarray:
        return inverse(recipe.transform, np.asarray(values).reshape(-1, *data.shape).astype(np.int64))

    if recipe.samples is not None:
        count, seed = recipe.samples
        drawn = np.asarray(model.sample(count, seed=seed))
        write_png_grid(run.path / "samples.png", images(drawn), scale=2)
        report["samples_png"] = "samples.png"
    if recipe.inpaint is not None:
        split, mask_name, count = recipe.inpaint
        source = getattr(data, split)
        if source is None:
            return
        originals = source[:count].reshape(min(count, len(source)), -1).astype(np.float64)
        mask = image_mask(mask_name, data.shape).reshape(-1)
        masked = originals.copy()
        masked[:, mask] = -1
        completed = np.asarray(model.sample(len(masked), evidence=masked, seed=0))
        shown = originals.copy()
        shown[:, mask] = 0
        write_png_grid(run.path / "inpaint.png", np.concatenate([images(originals), images(shown), images(completed)]),
                       columns=len(masked), scale=2)
        report["inpaint_png"] = "inpaint.png"
        report["inpaint"] = {"split": split, "mask": mask_name, "rows": ["original", "masked", "completed"]}


def image_mask(name: str, shape: tuple[int, int, int]) -> np.ndarray:
    """(H, W, C) boolean mask of the hidden pixels: ``left_half``, ``top_half`` or ``centre``."""
    h, w, _ = shape
    mask = np.zeros(shape, dtype=bool)
    if name == "left_half":
        mask[:, : w // 2] = True
    elif name == "top_half":
        mask[: h // 2] = True
    else:
        mask[h // 4: h - h // 4, w // 4: w - w // 4] = True
    return mask
