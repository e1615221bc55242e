"""The base of every pack node: its ``execute`` runs only after the layer's checks, by construction.

``HSpaceNode.__init_subclass__`` wraps each subclass's ``execute`` so that, before the node's own code (and so
before any U-Net pass):

1. every widget value is checked against the node's schema by ``checks.widget_problem`` (type, finiteness,
   [min, max], combo options, list entries and bounds);
2. the model comes first: it must have an h-space and the site; every x_T must be of this model (channels, size,
   architecture; other weights of the same architecture are logged: fine-tunes edit it legitimately), every
   direction too (other weights are refused unless ``allow_other_model``, then logged), and every trajectory;
3. the h-space objects a node combines must share one site and, for trajectories, one model, and the message
   names the inputs;
4. then every x_T's grid is checked against ``steps``, then the x_T share one guidance.

Errors from the layer and from the node's body are ValueErrors that start with the node's name.  Cancel and
progress are the adapter's: every U-Net pass checks for Cancel (``nodes.comfy.model``).
"""
from __future__ import annotations

import functools
import inspect
import logging

from comfy_api.latest import io

from ...hspace_core import HTrajectory, check_fingerprint
from ...hspace_core.sites import DEFAULT_SITE, site_of
from ..comfy.fingerprint import model_fingerprint
from ..comfy.checks import check_has_h_space, resolve_site
from .checks import widget_problem
from .origin import check_same_guidance, check_x_T_grid, check_x_T_model
from .resolution import check_window
from .search import with_search_aliases
from .schema import DirectionSet, DirectionType, Trajectory, is_x_T

log = logging.getLogger("hspace")

OTHER_MODEL_HINT = ("use a direction made with this model, or turn on allow_other_model (advanced) if this model is a "
                    "fine-tune or LoRA-patched version of it")


class HSpaceNode(io.ComfyNode):
    """A pack node: subclasses define ``define_schema`` and ``execute`` as any V3 node; the layer's checks run first."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        define = cls.__dict__.get("define_schema")
        if define is not None and not getattr(define.__func__, "hspace_aliased", False):
            cls.define_schema = classmethod(_aliased(define.__func__))
        execute = cls.__dict__.get("execute")
        if execute is None or getattr(execute.__func__, "hspace_checked", False):
            return  # ComfyUI's per-run class clones copy the already wrapped execute
        body = execute.__func__

        names = [p.name for p in inspect.signature(body).parameters.values()
                 if p.kind is p.POSITIONAL_OR_KEYWORD][1:]

        @functools.wraps(body)
        def checked(node_cls, *args, **inputs):
            inputs = {**dict(zip(names, args)), **inputs}  # ComfyUI passes keywords; tests may pass positions
            schema = node_cls.define_schema()
            try:
                check_node_inputs(schema, inputs)
                return body(node_cls, **inputs)
            except ValueError as error:
                raise ValueError(named(schema, str(error))) from error

        checked.hspace_checked = True
        cls.execute = classmethod(checked)


def _aliased(define):
    """``define_schema`` with the node's search aliases added (``search.with_search_aliases``)."""
    @functools.wraps(define)
    def aliased(node_cls):
        return with_search_aliases(define(node_cls))

    aliased.hspace_aliased = True
    return aliased


def node_name(schema) -> str:
    return schema.display_name or schema.node_id


def named(schema, message: str) -> str:
    name = node_name(schema)
    return message if message.startswith(f"{name}: ") else f"{name}: {message}"


H_OBJECTS = (Trajectory.Input, DirectionType.Input, DirectionSet.Input)


def check_node_inputs(schema, inputs: dict) -> None:
    """The layer's checks of one call (see the module docstring), in the order that names the real cause."""
    specs = {spec.id: spec for spec in schema.inputs}
    for name, value in inputs.items():
        spec = specs.get(name)
        if spec is not None and value is not None:
            problem = widget_problem(spec, value)
            if problem is not None:
                raise ValueError(problem)
    check_window(inputs)
    x_Ts = {name: inputs[name] for name, spec in specs.items() if is_x_T(spec) and inputs.get(name) is not None}
    h_objects = {name: inputs[name] for name, spec in specs.items()
                 if isinstance(spec, H_OBJECTS) and inputs.get(name) is not None}
    model = inputs.get("model")
    if model is not None:
        check_model(model, inputs, x_Ts, h_objects)
    check_h_objects(h_objects, model is not None)
    if "steps" in inputs:
        for name, x_T in x_Ts.items():
            check_x_T_grid(name, x_T, inputs["steps"], model)
    check_same_guidance(x_Ts, inputs.get("cfg", 1.0))


def _items(name: str, value):
    """(label, object) for an input holding one h-space object or a set of them."""
    if isinstance(value, (tuple, list)):
        return [(f"{name}[{i}]", item) for i, item in enumerate(value)]
    return [(name, value)]


def check_model(model, inputs: dict, x_Ts: dict, h_objects: dict) -> None:
    """The model first: an h-space, the site, the x_T's model, the directions' and trajectories' model."""
    check_has_h_space(model)
    for name, x_T in x_Ts.items():
        check_x_T_model(name, x_T, model)
    sites = {inputs.get("site") or DEFAULT_SITE} if "site" in inputs else set()
    sites |= {site_of(item) for value in h_objects.values() for _, item in _items("", value)}
    for site in sorted(sites):
        resolve_site(model, site)
    if not h_objects:
        return
    here = model_fingerprint(model)
    allow = inputs.get("allow_other_model", False)
    for name, value in h_objects.items():
        for label, item in _items(name, value):
            found = getattr(item, "fingerprint", "")
            if not found or found == here:
                continue
            what = "h trajectory" if isinstance(item, HTrajectory) else "direction"
            if found.split("/")[0] != here.split("/")[0]:
                check_fingerprint(found, here, f"{what} ({label})", hint=f"make the {what} with this MODEL")
            if what == "h trajectory":  # h of other weights is not this model's h: injected, it mixes two models
                check_fingerprint(found, here, f"h trajectory ({label})", hint="invert or capture it with this MODEL")
            if not allow:
                check_fingerprint(found, here, f"direction ({label})", hint=OTHER_MODEL_HINT)
            log.info("h-space: the direction %s was made with other weights (fingerprint %s) than this MODEL (%s); "
                     "allow_other_model is on, so it is applied.", label, found, here)


def check_h_objects(h_objects: dict, with_model: bool) -> None:
    """The h-space objects of one node share one site, and (without a model to compare with) trajectories share
    one model; the message names the inputs that differ."""
    labelled = [(label, item) for name, value in h_objects.items() for label, item in _items(name, value)]
    sites = {}
    for label, item in labelled:
        sites.setdefault(site_of(item), []).append(label)
    if len(sites) > 1:
        said = "; ".join(f"{', '.join(labels)} at site {site!r}" for site, labels in sites.items())
        raise ValueError(f"These inputs hold h read at different sites ({said}): make them all at one site (the site "
                         "setting of DDIM Inversion / Capture, or of the H-Space Inversion Sampler on a transformer).")
    if with_model:
        return
    trajectories = [(label, item) for label, item in labelled if isinstance(item, HTrajectory) and item.fingerprint]
    models = {}
    for label, item in trajectories:
        models.setdefault(item.fingerprint, []).append(label)
    if len(models) > 1:
        said = "; ".join(f"{', '.join(labels)} with model {fp}" for fp, labels in models.items())
        raise ValueError(f"These trajectories were made with different models ({said}): capture or invert all of them "
                         "with one MODEL.")
