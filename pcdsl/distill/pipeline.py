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

import functools
import hashlib
import json
import os
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcdsl.distill import lvd
from pcdsl.distill.compose import (
    PatchFamily,
    PatchShape,
    block_family,
    compose,
    decompose,
    family_of_training,
    top_parameter_groups,
    training_circuit,
)
from pcdsl.distill.recipe import Distillation, cropped
from pcdsl.io.atomic import write_atomic
from pcdsl.io.atomic import write_json as _write_json
from pcdsl.io.model import load_model, save_model
from pcdsl.ir.graph import CircuitGraph, Domain, Variable
from pcdsl.learn.train import Epoch
from pcdsl.params import Parameters

Log = Callable[[str], object]


def _key(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


@dataclass
class RunDir:
    """The run directory: stage keys, cached outputs and per-epoch checkpoints."""

    path: Path
    log: Log = print
    keys: dict[str, str] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    attempts: dict[str, dict[str, Any]] = field(default_factory=dict)  # stages started, not finished

    def __post_init__(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        state = self.path / "stages.json"
        if state.exists():
            saved = json.loads(state.read_text())
            self.keys, self.times = saved.get("keys", {}), saved.get("seconds", {})
            self.attempts = saved.get("attempts", {})

    def fresh(self, stage: str, key: str, *files: str) -> bool:
        """Whether `stage` already ran with `key` and its files are all there."""
        done = self.keys.get(stage) == key and all((self.path / f).exists() for f in files)
        if done:
            self.log(f"{stage}: cached ({', '.join(files)})")
        return done

    def start(self, stage: str, key: str) -> float:
        """Forget the stage's key before it writes anything (files a stopped attempt overwrote
        must never pass for the outputs of an earlier key); returns the seconds that earlier
        attempts at the same key spent on work they saved (up to their last file written)."""
        self.keys.pop(stage, None)
        earlier = self.attempts.get(stage, {})
        seconds = 0.0
        if earlier.get("key") == key:
            saved_until = max((f.stat().st_mtime for f in self.path.rglob("*")
                               if f.is_file() and f.name != "stages.json"), default=earlier["started"])
            seconds = earlier["seconds"] + max(0.0, saved_until - earlier["started"])
        self.attempts[stage] = {"key": key, "started": time.time(), "seconds": seconds}
        self._save()
        return seconds

    def finish(self, stage: str, key: str, seconds: float) -> None:
        self.keys[stage] = key
        self.times[stage] = seconds
        self.attempts.pop(stage, None)
        self._save()

    def _save(self) -> None:
        _write_json(self.path / "stages.json", {"keys": self.keys, "seconds": self.times, "attempts": self.attempts})

    def fit(self, stage: str, key: str, graph: CircuitGraph,
            train: Callable[[lvd.Resume], Parameters]) -> Parameters:
        """Run an EM fit that checkpoints after every epoch and resumes from its checkpoint to
        the same result. Each epoch writes a new checkpoint file (and a best file when the valid
        score rose), then the state file naming them in one atomic write: a kill at any moment
        leaves the state and the files it names consistent."""
        state_file, history = self.path / f"{stage}.json", self.path / f"{stage}.metrics.jsonl"
        resume = lvd.Resume()
        saved: dict[str, Any] = {}
        if state_file.exists():
            saved = json.loads(state_file.read_text())
            if saved.get("key") == key:
                best = (float(saved["best"]), load_model(self.path / saved["best_file"])[1]) \
                    if saved.get("best_file") else None
                resume = lvd.Resume(load_model(self.path / saved["ckpt"])[1], tuple(saved["position"]), best)
                self.log(f"{stage}: resuming after {saved['epochs_done']} epochs")
            else:
                saved = {}
        lines = history.read_text().splitlines(keepends=True)[:saved.get("epochs_done", 0)] if history.exists() else []
        history.write_text("".join(lines))  # epochs a stopped attempt logged after its last state go
        done = saved.get("epochs_done", 0)

        def on_epoch(epoch: Epoch, current: Parameters, best: tuple[float, Parameters] | None,
                     position: tuple[int, int, int]) -> None:
            nonlocal done, saved
            done += 1
            with open(history, "a") as f:
                f.write(json.dumps(epoch.as_dict(), sort_keys=True) + "\n")
            ckpt = f"{stage}.ckpt-{done}.safetensors"
            save_model(self.path / ckpt, graph, current)
            best_file = saved.get("best_file")
            if best is not None and best[1] is current:
                best_file = f"{stage}.best-{done}.safetensors"
                save_model(self.path / best_file, graph, current)
            previous = saved
            saved = {"key": key, "epochs_done": done, "position": list(position), "ckpt": ckpt,
                     "best": None if best is None else best[0], "best_file": best_file}
            _write_json(state_file, saved)
            for old in ("ckpt", "best_file"):  # files the state no longer names
                if previous.get(old) and previous[old] not in (ckpt, best_file):
                    (self.path / previous[old]).unlink(missing_ok=True)
            valid = f", valid {epoch.valid_ll:.4f}" if epoch.valid_ll is not None else ""
            self.log(f"{stage}: stage {epoch.stage + 1} epoch {epoch.epoch + 1}: train {epoch.train_ll:.4f}{valid}")

        return train(lvd.Resume(resume.params, resume.position, resume.best, on_epoch))


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
    from pcdsl.distill.latents import LatentError
    from pcdsl.distill.teachers import TeacherError
    from pcdsl.io.model import ModelFileError

    try:
        return _run(recipe, out_dir, backend, device, dtype, seed, progress, log)
    except (DataError, PatchError, TeacherError, LatentError) as exc:  # what only the data can tell
        raise DistillError(str(exc)) from None
    except (ModelFileError, json.JSONDecodeError) as exc:
        raise DistillError(f"the run directory '{out_dir}' holds a damaged file ({exc}); remove it, or the "
                           "whole directory to start afresh") from None


def _run(recipe: Distillation, out_dir: Path, backend: str, device: str, dtype: str, seed: int, progress: bool,
         log: Log) -> dict[str, Any]:
    from pcdsl.distill.images import PatchGrid

    run = RunDir(out_dir, log)
    data = load_data(recipe)
    grid = PatchGrid(data.shape, recipe.patch)
    dim_levels = _dim_levels(data, grid)
    base = _key(recipe.data_key, _fingerprint(recipe), recipe.transform, recipe.crop, recipe.patch)
    fit = lvd.Fit((), backend, dtype, device, seed, progress)
    trained = _key(seed, backend, dtype)  # what every fitted stage's result depends on besides the recipe

    teacher, teacher_key = _teacher(run, recipe, data, grid, base, progress, log)
    z, latents_key = _latents(run, recipe, data, grid, teacher, teacher_key)
    pc = recipe.patch_pc

    @functools.cache
    def shape() -> PatchShape:  # the Chow-Liu tree over pixel positions: only when a stage needs it
        return lvd.patch_shape(grid.to_patches(data.train).reshape(-1, grid.dims), dim_levels, pc["hidden"],
                               int(z["centroids"].shape[0]), pc["kind"] == "fully_factorized", seed=seed)

    latents = _growing(run, recipe, data, grid, teacher, z, shape, dim_levels, _key(latents_key, trained), fit) \
        if recipe.grow is not None else Latents(z, None, None, _key(latents_key, trained))
    family, patch_params, patch_key = _patches(run, recipe, data, grid, latents, shape, dim_levels, fit)
    top, top_params, top_key = _top(run, recipe, grid, latents, family, fit)
    graph, params = _distilled(run, recipe, data, grid, family, patch_params, top, top_params,
                               _key(patch_key, top_key), fit)
    return _report(run, recipe, data, grid, teacher, latents, family, top, graph, params, fit)


def _fingerprint(recipe: Distillation) -> list[tuple[str, int, int]]:
    """The files a run reads (images, a user teacher's weights), by path, size and modification
    time: replacing one re-runs every stage."""
    from pcdsl.data import DataError
    from pcdsl.distill.images import image_files

    source = recipe.source
    paths = []
    for split in ("train", "test"):
        try:
            paths += image_files(source.kind, source.args, source.base_dir, split)
        except DataError:
            continue  # no test files: the report says so
    weights = recipe.teacher[1].get("weights")
    if weights:
        paths.append(Path(str(weights)))
    out = []
    for path in paths:
        stat = path.stat() if path.exists() else None
        out.append((str(path.resolve()), stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1))
    return out


@dataclass(frozen=True)
class Latents:
    """The latent state of every patch (``z[split]``: (images, positions)), the patch family whose
    heads those states name, its starting parameters (grown ones, or None: counting) and the key
    of the stage that made them."""

    z: dict[str, np.ndarray]
    family: PatchFamily | None  # None: block HCLTs of the recipe's patch shape
    start: Parameters | None
    key: str
    report: dict[str, Any] = field(default_factory=dict)


def _timed(run: RunDir, stage: str, key: str, work: Callable[[], None]) -> None:
    """Run a stage's work; its seconds include what stopped attempts saved before they stopped."""
    earlier = run.start(stage, key)
    started = time.perf_counter()
    work()
    run.finish(stage, key, earlier + time.perf_counter() - started)


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

    key = _key(teacher_key, sorted(recipe.kmeans.items()))  # growing has a stage (and key) of its own
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
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    write_atomic(path, buffer.getvalue())


def _growing(run: RunDir, recipe: Distillation, data: Data, grid: Any, teacher: Any, z: dict[str, np.ndarray],
             shape: Callable[[], PatchShape], levels: tuple[int, ...], latents_key: str, fit: lvd.Fit) -> Latents:
    """Progressive growing of the patch circuits from the global clusters -> ``grown.safetensors``
    (the grown family's training circuit) and ``grown.npz`` (each patch's head)."""
    from pcdsl.distill.growing import Growing, assign_heads, progressive_growing

    grow = recipe.grow
    assert grow is not None
    key = _key(latents_key, sorted(grow.items()), sorted(recipe.patch_pc.items()), recipe.counting, recipe.patch_em)
    if run.fresh("growing", key, "grown.safetensors", "grown.npz", "grown.json"):
        graph, params = load_model(run.path / "grown.safetensors")
        with np.load(run.path / "grown.npz", allow_pickle=False) as saved:
            heads = {k: saved[k] for k in saved.files}
        return Latents(heads, family_of_training(graph), params, key, json.loads((run.path / "grown.json").read_text()))
    out: dict[str, Any] = {}

    def work() -> None:
        patches = grid.to_patches(data.train)
        n, p, d = patches.shape
        features = teacher.features(data.train)
        settings = Growing(heads=grow["to"], rounds=grow["rounds"], noise=grow["noise"], sample=grow["sample"] or None,
                           pseudocount=recipe.counting, seed=fit.seed, workers=grow["workers"] or (os.cpu_count() or 1))
        grow_fit = lvd.Fit(recipe.patch_em, fit.backend, fit.dtype, fit.device, fit.seed, fit.progress)
        run.log(f"growing: {shape().clusters} global clusters to {grow['to']} heads")
        cache = run.path / f"growing-{key}"  # finished global clusters: a stopped run keeps them
        for old in run.path.glob("growing-*"):  # those of other keys are of no use
            if old != cache:
                shutil.rmtree(old, ignore_errors=True)
        grown = progressive_growing(patches.reshape(n * p, d), z["train"].reshape(-1),
                                    features.reshape(n * p, -1), shape(), levels, grow_fit, settings, cache)
        heads = {"centroids": z["centroids"], "train": grown.z.reshape(n, p)}
        for split in ("valid", "test"):
            images = getattr(data, split)
            if images is not None and split in z:
                cut = grid.to_patches(images)
                chosen = assign_heads(grown, cut.reshape(-1, d), z[split].reshape(-1), fit)
                heads[split] = chosen.reshape(len(images), p)
        graph, params = grown.training()
        save_model(run.path / "grown.safetensors", graph, params)
        _save_npz(run.path / "grown.npz", heads)
        _write_json(run.path / "grown.json", grown.report())
        shutil.rmtree(cache, ignore_errors=True)
        out["latents"] = Latents(heads, grown.family, params, key, grown.report())

    _timed(run, "growing", key, work)
    return out["latents"]  # type: ignore[no-any-return]


def _patches(run: RunDir, recipe: Distillation, data: Data, grid: Any, latents: Latents,
             shape: Callable[[], PatchShape], dim_levels: tuple[int, ...],
             fit: lvd.Fit) -> tuple[PatchFamily, list[Parameters], str]:
    """Counting initialisation (or the grown parameters) and cluster-conditioned EM of the patch
    circuits -> ``patches.safetensors`` (``patches-{i}`` per position when they are not shared)."""
    from pcdsl.distill.counting import counting_init

    patches = grid.to_patches(data.train)
    valid = grid.to_patches(data.valid) if data.valid is not None and "valid" in latents.z else None
    pc, z = recipe.patch_pc, latents.z
    key = _key(latents.key, sorted(pc.items()), recipe.counting, recipe.patch_em)
    positions = [None] if pc["shared"] else list(range(grid.count))
    files = ["patches.safetensors"] if pc["shared"] else [f"patches-{i}.safetensors" for i in positions]
    if run.fresh("patches", key, *files):
        saved = [load_model(run.path / f) for f in files]
        return family_of_training(saved[0][0]), [p for _, p in saved], key
    patch_fit = lvd.Fit(recipe.patch_em, fit.backend, fit.dtype, fit.device, fit.seed, fit.progress)
    family = latents.family if latents.family is not None else block_family(shape(), dim_levels)
    graph = training_circuit(family)
    result: list[Parameters] = []

    def work() -> None:
        for i, name in zip(positions, files, strict=True):
            cut = slice(None) if i is None else slice(i, i + 1)
            rows = lvd.patch_rows(patches[:, cut], z["train"][:, cut])
            valid_rows = None if valid is None else lvd.patch_rows(valid[:, cut], z["valid"][:, cut])
            start = latents.start if latents.start is not None else counting_init(
                graph, shape(), rows[:, :-1], rows[:, -1], dim_levels, recipe.counting, fit.seed)
            stage = name.removesuffix(".safetensors")
            params = run.fit(stage, _key(key, stage), graph, functools.partial(
                lvd.fit_family, family, start, rows, valid_rows, patch_fit))
            save_model(run.path / name, graph, params)
            result.append(params)

    _timed(run, "patches", key, work)
    return family, result, key


def _top(run: RunDir, recipe: Distillation, grid: Any, latents: Latents, family: PatchFamily,
         fit: lvd.Fit) -> tuple[CircuitGraph, Parameters, str]:
    model, z = recipe.model, latents.z
    key = _key(latents.key, sorted(model.items()), recipe.latent_em)
    graph = lvd.latent_circuit(grid.count, family.clusters, z["train"], model["hidden"], model["trees"],
                               model["pseudocount"])
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
    out: list[Variable] = []
    for r in range(h):
        for col in range(w):
            for ch in range(c):
                name = f"x[{r}, {col}]" if c == 1 else f"x[{r}, {col}, {ch}]"
                out.append(Variable(name, len(out), Domain("categorical", int(levels[ch]))))
    return tuple(out)


def _distilled(run: RunDir, recipe: Distillation, data: Data, grid: Any, family: PatchFamily,
               patch_params: list[Parameters], top: CircuitGraph, top_params: Parameters, key: str,
               fit: lvd.Fit) -> tuple[CircuitGraph, Parameters]:
    key = _key(key, recipe.top_em, recipe.em)
    positions = [grid.pixel_columns(i) for i in range(grid.count)]
    graph, params = compose(top, top_params, family, patch_params,
                            image_variables(data.shape, data.levels), positions, recipe.patch_pc["shared"], recipe.name)
    graph.colour = recipe.transform  # the model file says which colour space its pictures are in
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
            out["params"] = run.fit(stage, _key(key, stage), graph, functools.partial(
                lvd.fit_distilled, graph, out["params"], train, valid, stage_fit, learn))
        save_model(run.path / "model.safetensors", graph, out["params"])

    _timed(run, "distilled", key, work)
    return graph, out["params"]


def _bpd(ll: float, dims: int) -> float:
    return -ll / (dims * np.log(2))


def _report(run: RunDir, recipe: Distillation, data: Data, grid: Any, teacher: Any, latents: Latents,
            family: PatchFamily, top: CircuitGraph, graph: CircuitGraph, params: Parameters,
            fit: lvd.Fit) -> dict[str, Any]:
    from pcdsl.distill.grown import nonzero_parameters
    from pcdsl.learn.train import mean_ll

    model, z = fit.compile(graph, params), latents.z
    dims = int(np.prod(data.shape))
    report: dict[str, Any] = {"recipe": recipe.name, "node_groups": len(graph), "edges": graph.num_edges(),
                              "parameters": graph.num_parameters(),
                              "nonzero_parameters": nonzero_parameters(graph, params),
                              "clusters": int(z["centroids"].shape[0]), "latent_states": family.clusters,
                              "patches": grid.count, "patch_dims": grid.dims, "transform": recipe.transform}
    if latents.report:
        report["growing"] = latents.report
    # the LVD bound of the final parameters: the distilled circuit's own parts
    top_params, parts = decompose(graph, params, top, family, 1 if recipe.patch_pc["shared"] else grid.count)
    latent = fit.compile(top, top_params)
    patch_models = [fit.compile(training_circuit(family), part) for part in parts]
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
            bound = lvd.lvd_bound(latent, z[split], patch_models, grid.to_patches(images))
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
