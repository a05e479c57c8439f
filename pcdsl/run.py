"""Running a recipe: data -> model -> training stages -> report, in a run directory.

The run directory holds everything a run produces, each file written atomically:

- ``state.json``: what the directory is for (:func:`describe`: the recipe's entries, the data's
  and model's checksums, the options) and, once finished, the size and SHA-256 of its outputs;
  a run of anything else here is refused with what changed;
- ``train.json`` + ``train.ckpt-K.safetensors``: how far training got, down to the mini-batch
  (:mod:`pcdsl.learn.checkpoint`); a restarted run resumes from them, to the same files;
- ``metrics.jsonl``: one JSON line per epoch (stage, epoch, step, train/valid log-likelihood);
- ``model.safetensors``: the best parameters (by validation score), a native model file;
- ``report.json``: the report's figures; ``circuit.svg``: a picture of the model;
- ``.lock``: held by the run in progress (:class:`pcdsl.io.rundir.RunLock`).

With several workers (:mod:`pcdsl.learn.parallel`) every worker trains and scores its shards;
rank 0 alone reads and writes the directory and hands the others what it read.

Recipes with a teacher, patches or latents run the distillation pipeline instead
(:mod:`pcdsl.distill.pipeline`, which documents its run directory).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pcdsl.data import DataError, load_values
from pcdsl.data.images import IMAGE_SOURCES
from pcdsl.frontend import Checked
from pcdsl.io import faults
from pcdsl.io.atomic import write_json as _write_json
from pcdsl.ir.graph import BOOL, CircuitGraph, Domain, Variable
from pcdsl.learn.checkpoint import Checkpointer
from pcdsl.learn.parallel import SOLO, Group, local_device
from pcdsl.learn.train import Epoch, Stage, Trainer, mean_ll
from pcdsl.params import Parameters, initialise
from pcdsl.syntax.recipes import RecipeSpec
from pcdsl.syntax.sources import DataSource


class RunError(Exception):
    """A recipe that cannot run here; the message says why. `from_rank0`: a worker stopping
    because rank 0 refused (rank 0 prints the message; the others need not repeat it)."""

    def __init__(self, message: str, from_rank0: bool = False):
        super().__init__(message)
        self.from_rank0 = from_rank0


@dataclass
class Splits:
    train: np.ndarray
    valid: np.ndarray | None
    test: np.ndarray | None
    image_shape: tuple[int, int, int] | None = None  # image sources: (H, W, C), 256 levels a value


def load_splits(checked: Checked, spec: RecipeSpec) -> Splits:
    bound = spec.entries["data"][0]
    if "ref" in bound.values:  # `data = some_source`: checked with the file already
        source = checked.data[bound.values["ref"]]
    else:
        call = bound.call
        source = DataSource(call.func.text, dict(bound.values), os.path.dirname(call.span.file), call.span)
    if source.kind in IMAGE_SOURCES:
        return _image_splits(source)

    def split(name: str) -> np.ndarray | None:
        if source.kind == "file" and name != "train":
            return None
        chosen = replace(source, args={**source.args, "split": name}) if source.kind == "debd" else source
        try:
            return load_values(next(p for p in chosen.candidates() if p.exists()))
        except StopIteration:
            if name == "train":
                raise RunError(f"no data file found (looked in {', '.join(map(str, chosen.candidates()))})") from None
            return None
        except DataError as exc:
            raise RunError(str(exc)) from None

    train = split("train")
    assert train is not None
    return Splits(train, split("valid"), split("test"))


def _image_splits(source: DataSource) -> Splits:
    """Train, valid (when the source holds some out) and test (when it has test files) images, one
    row per image."""
    def split(name: str) -> np.ndarray:
        try:
            return source.load(name).astype(np.float64)
        except DataError as exc:
            raise RunError(str(exc)) from None

    from pcdsl.distill.images import image_files, peek_images

    try:
        has_test = bool(image_files(source.kind, source.args, source.base_dir, "test"))
    except DataError:
        has_test = False  # a source without test files; a bad test file still stops the run
    train = split("train")
    shape = peek_images(source.kind, source.args, source.base_dir, "train").shape
    return Splits(train, split("valid") if source.args.get("valid") else None,
                  split("test") if has_test else None, shape)


def build_model(checked: Checked, spec: RecipeSpec, train: np.ndarray,
                image_shape: tuple[int, int, int] | None = None) -> CircuitGraph:
    from pcdsl.structures import generate

    if spec.model_circuit is not None:
        return checked.circuits[spec.model_circuit]
    call = spec.entries["model"][0]
    if call.values.get("over") is not None and _ref_name(call.values["over"]) != "data":
        raise RunError("only `over = data` models run so far (latent models need distillation)")
    if image_shape is not None:  # pixels have 256 levels, whatever the training images happen to show
        from pcdsl.distill.pipeline import image_variables

        variables = image_variables(image_shape, (256,) * image_shape[2])
    else:
        sizes = np.maximum(train.max(axis=0), 1).astype(int) + 1
        variables = tuple(Variable(f"x[{i}]", i, BOOL if s == 2 else Domain("categorical", int(s)))
                          for i, s in enumerate(sizes))
    graph = CircuitGraph(spec.name, variables, spec.span or call.call.span)
    options = {k: v for k, v in call.values.items() if k not in ("over",)}
    data = np.where(np.isnan(train), -1, train).astype(np.int64)
    if call.call.func.text == "hclt":
        options["data"] = data
    generate(call.call.func.text, graph, np.arange(len(variables)), prefix=call.call.func.text, **options)
    return graph


def _ref_name(value: Any) -> str:
    parts = getattr(value, "parts", None)
    return parts[0].text if parts else str(value)


def stages(spec: RecipeSpec) -> list[Stage]:
    out = []
    for bound in spec.entries["train"]:
        kind, v = bound.call.func.text, bound.values
        if kind == "em":
            out.append(Stage("em", v["epochs"], v["batch"], v["step"], v["pseudocount"], v["patience"],
                             rows=v["rows"], **_gaussian_and_regularisers(v)))
        elif kind == "full_em":
            out.append(Stage("full_em", v["epochs"], 1024, (1.0,), v["pseudocount"], v["patience"],
                             **_gaussian_and_regularisers(v)))
        elif kind == "sgd":
            out.append(Stage("sgd", v["epochs"], v["batch"], v["lr"], optimizer=v["optimizer"]))
        else:
            raise RunError(f"training stage '{kind}' is not supported yet (em, full_em and sgd are)")
    return out


def _gaussian_and_regularisers(v: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("soften", "entropy", "min_std", "gaussian_pseudocount")
    return {k: v[k] for k in keys}


def _checked(graph: CircuitGraph, splits: Splits) -> None:
    """Every split fits the circuit's variables (a RunError names the first value that does not)."""
    from pcdsl.data import check_values

    for name in ("train", "valid", "test"):
        values = getattr(splits, name)
        if values is not None:
            try:
                check_values(values, graph.variables, f"the {name} split")
            except DataError as exc:
                raise RunError(str(exc)) from None


def describe(spec: RecipeSpec, splits: Splits, graph: CircuitGraph, **options: Any) -> dict[str, str]:
    """What a run directory is for, entry by entry, in words: the recipe's entries, the data it
    read (rows and SHA-256 of each split), the model it built (SHA-256 of its structure) and the
    options that change results. A run resumes only where all are the same. (The number of
    workers is not among them: N workers take the same steps as one.)"""
    from pcdsl.io.model import _structure

    out = {kind: "; ".join(_entry(b) for b in bound) for kind, bound in spec.entries.items()}
    for name in ("train", "valid", "test"):
        values = getattr(splits, name)
        if values is not None:
            digest = hashlib.sha256(np.ascontiguousarray(values, dtype=np.float64).tobytes()).hexdigest()[:16]
            out[f"data ({name} split)"] = f"{len(values)} rows, sha256 {digest}"
    structure = json.dumps(_structure(graph), sort_keys=True).encode()
    out["model structure"] = "sha256 " + hashlib.sha256(structure).hexdigest()[:16]
    out.update({f"--{k}": str(v) for k, v in options.items()})
    return out


def _entry(bound: Any) -> str:
    values = ", ".join(f"{k} = {_ref_name(v) if hasattr(v, 'parts') else v!r}" for k, v in bound.values.items())
    return f"{bound.call.func.text}({values})"


STATE = "state.json"
OUTPUTS = ("model.safetensors", "report.json")


def _start(out_dir: Path, description: dict[str, str], log: Any,
           every: float | None) -> tuple[dict[str, Any], bytes, Checkpointer | None]:
    """Rank 0's look at the run directory (locked by the caller): ("finished", report) when the
    run is done and its outputs intact, else ("train", the last checkpoint or b"") and the
    checkpointer that read it."""
    from pcdsl.io.rundir import check_files, read_state, refuse_changed, remove_strays

    remove_strays(out_dir)
    state = read_state(out_dir / STATE)
    if state is not None and state.get("format") == "pcdsl-run":
        refuse_changed(out_dir, state["recipe"], description)
        if state.get("finished"):
            check_files(out_dir, state["files"])
            return {"status": "finished"}, (out_dir / "report.json").read_bytes(), None
    elif state is not None:  # a run directory of an older pcdsl: its files cannot be vouched for
        raise RunError(f"the run directory '{out_dir}' was made by an older pcdsl and cannot be resumed; remove it "
                       "(or choose another --out) to start afresh")
    else:
        _write_json(out_dir / STATE, {"format": "pcdsl-run", "recipe": description, "finished": False})
    checkpoints = Checkpointer(out_dir, "train", _key(description), metrics="metrics.jsonl", every=every, log=log)
    data = checkpoints.load()
    return {"status": "train"}, data or b"", checkpoints


def _key(description: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def _shared_start(out_dir: Path, description: dict[str, str], group: Group, log: Any,
                  every: float | None) -> tuple[str, bytes, Checkpointer | None]:
    """Rank 0 reads the run directory; every worker gets its verdict and checkpoint (a refusal
    stops them all, with rank 0's message); rank 0 keeps the checkpointer."""
    from pcdsl.io.rundir import RunDirError

    header: dict[str, Any] = {}
    data, checkpoints = b"", None
    if group.rank == 0:
        try:
            header, data, checkpoints = _start(out_dir, description, log, every)
        except (RunDirError, RunError) as exc:
            header = {"status": "error", "message": str(exc)}
    header = json.loads(group.broadcast(json.dumps(header).encode() if group.rank == 0 else None))
    if header["status"] == "error":
        raise RunError(header["message"], from_rank0=group.rank != 0)
    return header["status"], group.broadcast(data if group.rank == 0 else None), checkpoints


def _same_everywhere(description: dict[str, str], group: Group) -> None:
    """Every worker read the same data and built the same model (hosts with other files stop)."""
    if group.size == 1:
        return
    from pcdsl.learn.parallel import all_reduce_sum

    mine = json.dumps(description, sort_keys=True).encode()
    differs = group.broadcast(mine if group.rank == 0 else None) != mine
    if all_reduce_sum(float(differs), group):
        raise RunError("the workers do not agree on the data or the model (each must read the same recipe and data "
                       "files; on several hosts, copy them to each)" +
                       (f": worker {group.rank} differs from worker 0" if differs else ""), from_rank0=not differs)


def run_recipe(checked: Checked, name: str, out_dir: Path, *, backend: str | None = None, device: str = "cpu",
               dtype: str = "float32", seed: int = 0, progress: bool = True, log: Any = print,
               group: Group | None = None, on_epoch: Callable[[Epoch, Parameters], None] | None = None,
               checkpoint_seconds: float | None = None) -> dict[str, Any]:
    """Run (or resume) a recipe; returns the report.

    `group`: the data-parallel workers (:mod:`pcdsl.learn.parallel`; None: this process alone);
    only rank 0 writes `out_dir`. `on_epoch` is called on every worker after every epoch.
    `checkpoint_seconds`: how often a mini-batch epoch checkpoints (default
    ``PCDSL_CHECKPOINT_SECONDS`` or 60). A run killed at any moment resumes to the same files."""
    from pcdsl.io.rundir import RunDirError, RunLock

    spec = checked.recipes[name]
    group = group or SOLO
    from pcdsl.distill.recipe import is_distillation, read_distillation

    if is_distillation(spec):
        from pcdsl.distill.pipeline import DistillError, run_distillation

        chosen = backend or ("numba" if device == "cpu" else "torch")  # numba is the faster CPU backend here
        try:
            return run_distillation(read_distillation(spec, checked.data), out_dir, backend=chosen, device=device,
                                    dtype=dtype, seed=seed, progress=progress, log=log, group=group)
        except DistillError as exc:
            raise RunError(str(exc)) from None
    if group.rank != 0:
        log, progress = (lambda *_: None), False
    backend = backend or "torch"
    with contextlib.ExitStack() as stack:
        if group.rank == 0:
            try:
                stack.enter_context(RunLock(out_dir))
            except RunDirError as exc:
                raise RunError(str(exc)) from None
        return _train_and_report(checked, spec, out_dir, backend, device, dtype, seed, progress, log, group,
                                 on_epoch, checkpoint_seconds)


def _train_and_report(checked: Checked, spec: RecipeSpec, out_dir: Path, backend: str, device: str, dtype: str,
                      seed: int, progress: bool, log: Any, group: Group,
                      on_epoch: Callable[[Epoch, Parameters], None] | None,
                      checkpoint_seconds: float | None) -> dict[str, Any]:
    import pcdsl
    from pcdsl.io.model import save_model
    from pcdsl.learn.checkpoint import decode
    from pcdsl.learn.gaussian import from_data

    splits = load_splits(checked, spec)
    plan = stages(spec)
    graph = build_model(checked, spec, splits.train, splits.image_shape)
    _checked(graph, splits)
    params = from_data(graph, initialise(graph, seed), splits.train, seed)
    description = describe(spec, splits, graph, seed=seed, backend=backend, dtype=dtype,
                           device=device.split(":")[0])
    _same_everywhere(description, group)
    status, data, checkpoints = _shared_start(out_dir, description, group, log, checkpoint_seconds)
    if status == "finished":
        log(f"{spec.name}: the run in {out_dir} had finished; its files are intact")
        return json.loads(data)  # type: ignore[no-any-return]
    model = pcdsl.compile(graph, backend, params=params, device=local_device(group, device), dtype=dtype)
    trainer = Trainer(model, params, splits.train, splits.valid, seed, progress, on_epoch, group)
    snapshot = decode(data, params.fixed, str(out_dir / "train.json")) if data else None
    if checkpoints is not None:  # rank 0
        if snapshot is not None:
            inside = f" and {snapshot.batch} mini-batches of the next" if snapshot.batch else ""
            log(f"resuming {spec.name} after {checkpoints.epochs_done} epochs{inside}")

        def after_epoch(epoch: Epoch, current: Parameters) -> None:
            assert trainer.best is not None
            if trainer.best[1] is current:  # a new best: the model file follows it
                save_model(out_dir / "model.safetensors", graph, current)
            valid = f", valid {epoch.valid_ll:.4f}" if epoch.valid_ll is not None else ""
            log(f"{plan[epoch.stage].kind} epoch {epoch.epoch + 1}: train {epoch.train_ll:.4f}{valid}")
            if on_epoch is not None:
                on_epoch(epoch, current)

        checkpoints.attach(trainer, after_epoch)
    final = trainer.run(plan, resume=snapshot)
    report = _report(spec, model, splits, graph, group)
    if group.rank == 0:
        _finish(out_dir, graph, final, report, description)
    return report


def _finish(out_dir: Path, graph: CircuitGraph, final: Parameters, report: dict[str, Any],
            description: dict[str, str]) -> None:
    """The outputs, then the state vouching for them; the checkpoints are of no more use."""
    from pcdsl.io.model import save_model
    from pcdsl.io.rundir import record

    save_model(out_dir / "model.safetensors", graph, final)
    _write_json(out_dir / "report.json", report)
    _render(graph, out_dir)
    faults.point("finish")
    _write_json(out_dir / STATE, {"format": "pcdsl-run", "recipe": description, "finished": True,
                                  "files": {f: record(out_dir / f) for f in OUTPUTS}})
    Checkpointer(out_dir, "train", _key(description), metrics="metrics.jsonl").clear()


def _report(spec: RecipeSpec, model: Any, splits: Splits, graph: CircuitGraph, group: Group = SOLO) -> dict[str, Any]:
    report: dict[str, Any] = {"recipe": spec.name, "nodes": len(graph), "edges": graph.num_edges(),
                              "parameters": graph.num_parameters()}
    for bound in spec.entries.get("report", []):
        kind = bound.call.func.text
        if kind in ("loglik", "bpd"):
            data = getattr(splits, bound.values["split"])
            if data is None:
                raise RunError(f"no {bound.values['split']} split to report on")
            ll = mean_ll(model, data, group=group)
            report[f"{bound.values['split']}_loglik"] = ll
            report[f"{bound.values['split']}_bpd"] = -ll / (data.shape[1] * np.log(2))
        elif kind == "samples":
            report["samples"] = np.asarray(model.sample(bound.values["count"], seed=bound.values["seed"])).tolist()
        else:
            raise RunError(f"report '{kind}' is not supported for this recipe yet")
    return report


def _render(graph: CircuitGraph, out_dir: Path) -> None:
    from pcdsl.drawing import RenderError, render_file

    try:
        render_file(graph, out_dir / "circuit.svg", "region")
    except RenderError:
        render_file(graph, out_dir / "circuit.dot", "region")  # no graphviz: the DOT text still helps
