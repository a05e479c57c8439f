"""Running a recipe: data -> model -> training stages -> report, in a run directory.

The run directory holds everything a run produces, each file written atomically:

- ``metrics.jsonl``: one JSON line per epoch (stage, epoch, step, train/valid log-likelihood);
- ``checkpoint.safetensors`` + ``state.json``: the parameters after the last epoch and how far
  training got; a restarted run resumes from them;
- ``model.safetensors``: the best parameters (by validation score), a native model file;
- ``report.json``: the report's figures; ``circuit.svg``: a picture of the model.

Recipes with a teacher, patches or latents run the distillation pipeline instead
(:mod:`pcdsl.distill.pipeline`, which documents its run directory).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pcdsl.data import DataError, load_values
from pcdsl.data.images import IMAGE_SOURCES
from pcdsl.frontend import Checked
from pcdsl.io.atomic import write_json as _write_json
from pcdsl.ir.graph import BOOL, CircuitGraph, Domain, Variable
from pcdsl.learn.train import Epoch, Stage, Trainer, mean_ll
from pcdsl.params import Parameters, initialise
from pcdsl.syntax.recipes import RecipeSpec
from pcdsl.syntax.sources import DataSource


class RunError(Exception):
    """A recipe that cannot run here; the message says why."""


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


def run_recipe(checked: Checked, name: str, out_dir: Path, *, backend: str | None = None, device: str = "cpu",
               dtype: str = "float32", seed: int = 0, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """Run (or resume) a recipe; returns the report."""
    import pcdsl
    from pcdsl.io.model import ModelFileError, load_model, save_model
    from pcdsl.learn.gaussian import from_data

    spec = checked.recipes[name]
    from pcdsl.distill.recipe import is_distillation, read_distillation

    if is_distillation(spec):
        from pcdsl.distill.pipeline import DistillError, run_distillation

        chosen = backend or ("numba" if device == "cpu" else "torch")  # numba is the faster CPU backend here
        try:
            return run_distillation(read_distillation(spec, checked.data), out_dir, backend=chosen, device=device,
                                    dtype=dtype, seed=seed, progress=progress, log=log)
        except DistillError as exc:
            raise RunError(str(exc)) from None
    backend = backend or "torch"
    splits = load_splits(checked, spec)
    plan = stages(spec)
    graph = build_model(checked, spec, splits.train, splits.image_shape)
    _checked(graph, splits)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(repr((spec.entries, seed)).encode()).hexdigest()[:16]
    state_file, checkpoint = out_dir / "state.json", out_dir / "checkpoint.safetensors"
    best_file = out_dir / "model.safetensors"
    done, params, best = 0, from_data(graph, initialise(graph, seed), splits.train, seed), None
    if state_file.exists() and checkpoint.exists():
        state = json.loads(state_file.read_text())
        if state.get("recipe") == key:
            try:
                done, params = state["epochs_done"], load_model(checkpoint)[1]
                if state.get("best_score") is not None and best_file.exists():
                    best = (state["best_score"], load_model(best_file)[1])
            except ModelFileError as exc:
                raise RunError(f"cannot resume from {out_dir}: {exc} (delete the run directory to start afresh)") \
                    from None
            log(f"resuming {name} after {done} epochs")
    model = pcdsl.compile(graph, backend, params=params, device=device, dtype=dtype)
    metrics = out_dir / "metrics.jsonl"
    if done == 0 and metrics.exists():
        metrics.unlink()

    def on_epoch(epoch: Epoch, current: Parameters) -> None:
        nonlocal done
        done += 1
        with open(metrics, "a") as f:
            f.write(json.dumps(epoch.as_dict(), sort_keys=True) + "\n")
        save_model(checkpoint, graph, current)
        assert trainer.best is not None
        if trainer.best[1] is current:  # a new best: the model file follows it
            save_model(best_file, graph, current)
        _write_json(state_file, {"recipe": key, "epochs_done": done, "best_score": trainer.best[0]})
        valid = f", valid {epoch.valid_ll:.4f}" if epoch.valid_ll is not None else ""
        log(f"{plan[epoch.stage].kind} epoch {epoch.epoch + 1}: train {epoch.train_ll:.4f}{valid}")

    trainer = Trainer(model, params, splits.train, splits.valid, seed, progress, on_epoch)
    trainer.best = best
    final = trainer.run(plan, start_epoch=done)
    save_model(best_file, graph, final)
    report = _report(spec, model, splits, graph)
    _write_json(out_dir / "report.json", report)
    _render(graph, out_dir)
    return report


def _report(spec: RecipeSpec, model: Any, splits: Splits, graph: CircuitGraph) -> dict[str, Any]:
    report: dict[str, Any] = {"recipe": spec.name, "nodes": len(graph), "edges": graph.num_edges(),
                              "parameters": graph.num_parameters()}
    for bound in spec.entries.get("report", []):
        kind = bound.call.func.text
        if kind in ("loglik", "bpd"):
            data = getattr(splits, bound.values["split"])
            if data is None:
                raise RunError(f"no {bound.values['split']} split to report on")
            ll = mean_ll(model, data)
            report[f"{bound.values['split']}_loglik"] = ll
            report[f"{bound.values['split']}_bpd"] = -ll / (data.shape[1] * np.log(2))
        elif kind == "samples":
            report["samples"] = np.asarray(model.sample(bound.values["count"], seed=bound.values["seed"])).tolist()
        else:
            raise RunError(f"report '{kind}' is not supported for this recipe yet")
    return report


def _render(graph: CircuitGraph, out_dir: Path) -> None:
    from pcdsl.render import RenderError, render_file

    try:
        render_file(graph, out_dir / "circuit.svg", "region")
    except RenderError:
        render_file(graph, out_dir / "circuit.dot", "region")  # no graphviz: the DOT text still helps
