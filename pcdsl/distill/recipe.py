"""A checked distillation recipe, read into plain values, and the checks that need its data.

A recipe is a distillation when it has ``patches``, ``teacher`` or ``latents``. Its ``train``
block may hold, in any order:

- ``counting(pseudocount)``: LVD's counting initialisation of the patch circuits;
- ``patch_em(...)``: cluster-conditioned EM of the patch circuits (default
  ``epochs = 3, batch = 4096, step = 0.3 -> 0.05``); ``rows = N`` draws N patches afresh for
  each epoch (every stage below takes it too: images for the circuit over pixels);
- ``latent_em(...)``: EM of the top-level HCLT on the hard assignments (default
  ``epochs = 10, batch = 512, step = 0.5 -> 0.05``);
- ``top_em(...)``: EM of the top level on exact soft evidence from the frozen patch circuits
  (default ``epochs = 2, batch = 512, step = 0.3 -> 0.05``);
- ``em(...)`` / ``full_em(...)``: EM of every parameter on log p(x) (none by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from pcdsl.learn.train import Stage
from pcdsl.syntax.recipes import RecipeSpec
from pcdsl.syntax.sources import DataSource
from pcdsl.syntax.values import Values

DISTILLATION_KEYS = ("patches", "teacher", "latents")
DEFAULTS = {
    "patch_em": Stage("em", 3, 4096, (0.3, 0.05), 0.1),
    "latent_em": Stage("em", 10, 512, (0.5, 0.05), 0.1),
    "top_em": Stage("em", 2, 512, (0.3, 0.05), 0.1),
}


def is_distillation(spec: RecipeSpec) -> bool:
    return any(k in spec.entries for k in DISTILLATION_KEYS)


@dataclass(frozen=True)
class Distillation:
    name: str
    source: DataSource
    patch: tuple[int, int]
    transform: str
    teacher: tuple[str, dict[str, Any]]
    kmeans: dict[str, Any]
    grow: dict[str, Any] | None
    model: dict[str, Any]  # hidden, trees, pseudocount of the top-level HCLT
    patch_pc: dict[str, Any]  # kind, hidden (units per cluster), shared
    counting: float
    patch_em: tuple[Stage, ...]
    latent_em: tuple[Stage, ...]
    top_em: tuple[Stage, ...]
    em: tuple[Stage, ...]
    bpd_splits: tuple[str, ...]
    samples: tuple[int, int] | None  # count, seed
    inpaint: tuple[str, str, int] | None  # split, mask, count
    crop: tuple[str, int, int] | None = None  # tiles | centre, height, width

    @property
    def data_key(self) -> str:
        return repr((self.source.kind, sorted((k, str(v)) for k, v in self.source.args.items())))


def data_source(spec: RecipeSpec, sources: dict[str, DataSource]) -> DataSource:
    bound = spec.entries["data"][0]
    if "ref" in bound.values:
        return sources[bound.values["ref"]]
    call = bound.call
    return DataSource(call.func.text, dict(bound.values), os.path.dirname(call.span.file), call.span)


def _stage(kind: str, v: Any) -> Stage:
    regularisers = {k: v[k] for k in ("soften", "entropy") if k in v}
    if kind == "full_em":
        return Stage("full_em", v["epochs"], 1024, (1.0,), v["pseudocount"], v["patience"], **regularisers)
    return Stage("em", v["epochs"], v["batch"], v["step"], v["pseudocount"], v["patience"], rows=v.get("rows"),
                 **regularisers)


def read_distillation(spec: RecipeSpec, sources: dict[str, DataSource]) -> Distillation:
    """The recipe's values, with the documented defaults for what it leaves out."""
    first = {k: calls[0] for k, calls in spec.entries.items() if calls and k != "train" and k != "report"}
    patch = first["patches"].values if "patches" in first else {"height": 4, "width": 4}
    teacher = first.get("teacher")
    teacher_kind = teacher.call.func.text if teacher is not None else "pixels"
    teacher_options = {k: v for k, v in (teacher.values if teacher else {}).items() if v is not None}
    if teacher is not None and "weights" in teacher_options:  # paths are relative to the recipe's file
        teacher_options["weights"] = os.path.join(os.path.dirname(teacher.call.span.file),
                                                  os.path.expanduser(str(teacher_options["weights"])))
    latents = spec.entries.get("latents", [])
    kmeans = dict(latents[0].values) if latents else {"clusters": 64, "iterations": 50, "seed": 0}
    kmeans.pop("features", None)
    grow = dict(latents[1].values) if len(latents) > 1 else None
    model = dict(first["model"].values)
    model.pop("over", None)
    option = spec.options.get("patch_pc")
    patch_pc = {"kind": option.call.func.text if option else "hclt", "shared": True, "hidden": 8}
    if option is not None:
        patch_pc.update(option.values)
        if "units" in patch_pc:
            patch_pc["hidden"] = patch_pc.pop("units")
    steps: dict[str, list[Stage]] = {"patch_em": [], "latent_em": [], "top_em": [], "em": []}
    counting = 0.1
    for bound in spec.entries["train"]:
        kind = bound.call.func.text
        if kind == "counting":
            counting = bound.values["pseudocount"]
        elif kind in steps:
            steps[kind].append(_stage(kind, bound.values))
        elif kind == "full_em":
            steps["em"].append(_stage(kind, bound.values))
    stages = {k: tuple(v) or ((DEFAULTS[k],) if k in DEFAULTS else ()) for k, v in steps.items()}
    bpd_splits, samples, inpaint = [], None, None
    for bound in spec.entries.get("report", []):
        kind, v = bound.call.func.text, bound.values
        if kind in ("bpd", "loglik"):
            bpd_splits.append(v["split"])
        elif kind == "samples":
            samples = (v["count"], v["seed"])
        elif kind == "inpaint":
            inpaint = (v["split"], v["mask"], v["count"])
    transform = first["transform"].call.func.text if "transform" in first else "identity"
    crop = first.get("crop")
    return Distillation(spec.name, data_source(spec, sources), (patch["height"], patch["width"]), transform,
                        (teacher_kind, teacher_options), kmeans, grow, model, patch_pc, counting,
                        stages["patch_em"], stages["latent_em"], stages["top_em"], stages["em"],
                        tuple(dict.fromkeys(bpd_splits)), samples, inpaint,
                        None if crop is None else (crop.call.func.text, crop.values["height"], crop.values["width"]))


def cropped(images: np.ndarray, crop: tuple[str, int, int] | None) -> np.ndarray:
    """`tiles`: every image cut into non-overlapping crops, each a sample (row-major, image by
    image); `centre`: the centre crop of every image."""
    if crop is None:
        return images
    kind, h, w = crop
    n, height, width, c = images.shape
    if kind == "centre":
        top, left = (height - h) // 2, (width - w) // 2
        return images[:, top:top + h, left:left + w]
    tiles = images.reshape(n, height // h, h, width // w, w, c).transpose(0, 1, 3, 2, 4, 5)
    return tiles.reshape(-1, h, w, c)


def crop_problem(crop: tuple[str, int, int] | None, shape: tuple[int, int, int]) -> str | None:
    if crop is None:
        return None
    kind, h, w = crop
    if h > shape[0] or w > shape[1]:
        return f"a {h}x{w} crop does not fit {shape[0]}x{shape[1]} images"
    if kind == "tiles" and (shape[0] % h or shape[1] % w):
        return f"{h}x{w} tiles do not cut {shape[0]}x{shape[1]} images evenly"
    return None


def _check_entries(spec: RecipeSpec, vals: Values) -> None:
    """What a distillation recipe's entries must agree on among themselves."""
    latents = spec.entries.get("latents", [])
    option = spec.options.get("patch_pc")
    if len(latents) > 1:
        if option is not None and (option.call.func.text != "hclt" or not option.values["shared"]):
            vals.fail("E0605", "progressive growing needs shared HCLT patch circuits", option.call.span,
                      help="use `patch_pc = hclt(hidden = ..., shared = true)` with `| grow(...)`")
        clusters, target = latents[0].values["clusters"], latents[1].values["to"]
        if target < clusters:
            vals.fail("E0605", f"grow(to = {target}) would have fewer heads than the {clusters} clusters it grows "
                      "from", latents[1].call.span, help=f"grow to at least {clusters} heads")
    model = spec.entries["model"][0]
    if spec.model_circuit is not None or model.call.func.text != "hclt":
        vals.fail("E0605", "the top level of a distillation is an HCLT over the latents", model.call.span,
                  help="write `model = hclt(over = latents, hidden = ...)`")
    for bound in spec.entries["train"]:
        if bound.call.func.text == "sgd":
            vals.fail("E0605", "distillation trains with EM steps; sgd(...) is for recipes without a teacher",
                      bound.call.span, help="use em(...) or full_em(...)")


def check_distillation(spec: RecipeSpec, vals: Values, sources: dict[str, DataSource]) -> None:
    """Diagnostics a distillation recipe can get before it runs: a patch grid that does not tile
    its images, more clusters than patches, a report on a split the data does not have (errors),
    and images that cannot be read yet (a warning here; `pcdsl run` stops on it). Each is located
    at the recipe entry that causes it."""
    from pcdsl.data import DataError
    from pcdsl.diagnostics import warning
    from pcdsl.distill.images import IMAGE_SOURCES, PatchError, PatchGrid, image_source_problem, peek_images

    _check_entries(spec, vals)
    source = data_source(spec, sources)
    data_span = spec.entries["data"][0].call.span
    if source.kind not in IMAGE_SOURCES:
        vals.fail("E0605", f"a distillation recipe needs images, but '{source.kind}' is not an image source",
                  data_span, help=f"use one of {', '.join(IMAGE_SOURCES)}")
        return
    problem = image_source_problem(source)
    if problem is not None:  # a warning: a recipe may be written before its data is in place
        vals.sink.add(warning("W0601", f"the recipe's images cannot be read yet: {problem}", data_span,
                              help="`pcdsl run` needs them: check the path, or install the data (docs/data.md)"))
        return
    info = peek_images(source.kind, source.args, source.base_dir, "train")
    shape, count = info.shape, info.count
    if "crop" in spec.entries:
        bound = spec.entries["crop"][0]
        crop = (bound.call.func.text, bound.values["height"], bound.values["width"])
        problem = crop_problem(crop, shape)
        if problem is not None:
            vals.fail("E0605", problem, bound.call.span, help="choose a crop that fits the images")
            return
        per_image = (shape[0] // crop[1]) * (shape[1] // crop[2]) if crop[0] == "tiles" else 1
        shape, count = (crop[1], crop[2], shape[2]), count * per_image
    if "patches" in spec.entries:
        patches = spec.entries["patches"][0]
        try:
            grid = PatchGrid(shape, (patches.values["height"], patches.values["width"]))
        except PatchError as exc:
            vals.fail("E0605", str(exc), patches.call.span, help="choose a patch size that divides the image")
            return
        latents = spec.entries.get("latents", [])
        if latents:
            clusters = latents[0].values["clusters"]
            wanted = latents[-1].values.get("to", clusters) if len(latents) > 1 else clusters
            available = count * grid.count
            if max(clusters, wanted) > available:
                vals.fail("E0605", f"{max(clusters, wanted)} clusters but only {available} patches "
                          f"({count} training images x {grid.count} patches)", latents[0].call.span,
                          help="ask for fewer clusters than there are patches")
    if "transform" in spec.entries:
        transform = spec.entries["transform"][0]
        if transform.call.func.text != "identity" and shape[2] != 3:
            vals.fail("E0605", f"the {transform.call.func.text} colour transform needs RGB images, these have "
                      f"{shape[2]} channel{'s' if shape[2] != 1 else ''}", transform.call.span,
                      help="use `transform = identity()` or leave it out")
    for bound in spec.entries.get("report", []):
        split = bound.values.get("split")
        if split in ("valid", "test"):
            try:
                peek_images(source.kind, source.args, source.base_dir, split)
            except DataError as exc:
                vals.fail("E0605", f"the report needs the {split} split: {exc}", bound.call.span,
                          help="give the source `valid = N`, or report on another split")
