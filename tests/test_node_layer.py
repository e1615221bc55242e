"""The node-execution layer over every registered pack node: each widget refuses NaN, ±inf, a wrong type, an
out-of-range value and an over-long list with a ValueError naming the node and the widget, before the node touches
any other input (so before any U-Net pass); and the prompt's type gate refuses what ComfyUI would coerce."""
import math

import pytest


@pytest.fixture(scope="module")
def layer(pack):
    import hspace_pack.nodes as nodes
    from comfy_api.latest import io

    return nodes, io


class Untouchable:
    """Stands in for every non-widget input (MODEL, LATENT, trajectories …): any use of it is a failure."""

    def __getattr__(self, name):
        raise AssertionError(f"the node used an input ({name}) before refusing a bad widget")

    def __getitem__(self, key):
        raise AssertionError(f"the node used an input ([{key!r}]) before refusing a bad widget")


def _good_value(spec, io):
    if isinstance(spec, io.Combo.Input):
        return spec.default if spec.default is not None else (spec.options[0] if spec.options else "")
    return spec.default


def _bad_values(spec, io):
    """(label, value) pairs the widget must refuse."""
    if isinstance(spec, io.Boolean.Input):
        return [("string 'false'", "false"), ("string 'true'", "true"), ("int 0", 0), ("int 1", 1), ("float", 1.0)]
    if isinstance(spec, io.Int.Input):
        bad = [("float", 2.5), ("whole float", 2.0), ("bool", True), ("string", "3"), ("nan", math.nan),
               ("inf", math.inf)]
        bad += [("above max", spec.max + 1)] if spec.max is not None else []
        return bad + ([("below min", spec.min - 1)] if spec.min is not None else [])
    if isinstance(spec, io.Float.Input):
        bad = [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("string", "0.5"), ("bool", True)]
        bad += [("above max", spec.max + 1)] if spec.max is not None else []
        return bad + ([("below min", spec.min - 1)] if spec.min is not None else [])
    if isinstance(spec, io.Combo.Input):
        return [("unknown option", "no such option ∅"), ("number", 3)]
    if isinstance(spec, io.String.Input):
        bad = [("number", 5), ("bool", False)]
        values = getattr(spec, "hspace_values", None)
        if values is not None:
            over = ", ".join(["1"] * (values.max_count + 1))
            bad += [("over-long list", over), ("empty entry", "1,,1"), ("nan entry", "nan"),
                    ("out of range", f"{values.high * 2 + 1}"), ("not numbers", "a, b")]
        return bad
    return []


def _cases(nodes, io):
    for node in nodes.NODES:
        schema = node.define_schema()
        empty = [s for s in schema.inputs if isinstance(s, io.Combo.Input) and not s.options]  # no files here
        for spec in schema.inputs:
            if empty and spec is not empty[0]:
                continue  # the node refuses its file combo first; the layer's order is tested elsewhere
            for label, value in _bad_values(spec, io):
                yield node, schema, spec, label, value


def test_every_registered_node_runs_behind_the_layer(layer):
    nodes, io = layer
    from hspace_pack.nodes.layer import HSpaceNode

    for node in nodes.NODES:
        assert issubclass(node, HSpaceNode), node
        assert getattr(node.execute.__func__, "hspace_checked", False), node


def test_every_node_is_named_h_space_in_the_menu_and_has_a_unique_id(layer):
    nodes, _ = layer
    schemas = [node.define_schema() for node in nodes.NODES]
    assert [s.display_name for s in schemas if not s.display_name.startswith("H-Space ")] == []
    assert len({s.node_id for s in schemas}) == len(schemas) and all(s.node_id.startswith("HSpace") for s in schemas)


def test_every_widget_of_every_node_refuses_bad_values_by_name_before_any_work(layer):
    nodes, io = layer
    checked = 0
    for node, schema, spec, label, value in _cases(nodes, io):
        inputs = {s.id: _good_value(s, io) if isinstance(s, io.WidgetInput) else Untouchable() for s in schema.inputs
                  if not s.optional or isinstance(s, io.WidgetInput)}
        inputs = {k: v for k, v in inputs.items() if v is not None}
        inputs[spec.id] = value
        with pytest.raises(ValueError) as caught:
            node.execute(**inputs)
        message = str(caught.value)
        assert message.startswith(f"{schema.display_name}: "), (schema.node_id, spec.id, label, message)
        assert spec.id in message, (schema.node_id, spec.id, label, message)
        checked += 1
    assert checked > 300, checked  # 26 nodes, ~100 widgets


def test_the_prompt_gate_refuses_what_comfyui_would_coerce(layer):
    nodes, io = layer
    from hspace_pack.nodes.layer.prompt_types import gate

    prompt = {"1": {"class_type": "HSpaceAsyrpEdit",
                    "inputs": {"allow_other_model": "false", "steps": 2.7, "strength": "1", "seed": True,
                               "t_edit": 400, "x_T": ["2", 0], "cfg": float("nan")}},
              "2": {"class_type": "KSampler", "inputs": {"steps": 2.7}}}
    gate(nodes.NODES)({"prompt": prompt})
    inputs = prompt["1"]["inputs"]
    for name, convert in (("allow_other_model", bool), ("steps", int), ("strength", float), ("seed", int),
                          ("cfg", float)):
        with pytest.raises(ValueError, match=f"^H-Space Asyrp Edit: {name} is "):
            convert(inputs[name])
    assert inputs["t_edit"] == 400 and type(inputs["t_edit"]) is int and inputs["x_T"] == ["2", 0]
    assert prompt["2"]["inputs"]["steps"] == 2.7  # other packs' nodes are left alone
    assert "not a boolean" in inputs["allow_other_model"].message and "'false'" == str(inputs["allow_other_model"])


def test_a_refused_value_survives_what_comfyui_does_to_a_queued_prompt(layer):
    """ComfyUI's PromptQueue deep-copies a queued prompt (and may pickle it): a refused value must come out equal and
    still refusing; without __reduce__ copy.deepcopy raised a TypeError in the worker thread and stopped the queue."""
    import copy
    import pickle

    from hspace_pack.nodes.layer.prompt_types import RefusedValue

    for sent in ("false", 0, float("nan"), True):
        value = RefusedValue(sent, "H-Space Shift: strength is nan; send a number")
        for copied in (copy.deepcopy(value), copy.copy(value), pickle.loads(pickle.dumps(value)),
                       copy.deepcopy({"inputs": {"strength": value}})["inputs"]["strength"]):
            assert type(copied) is RefusedValue and str(copied) == str(value) and copied.message == value.message
            with pytest.raises(ValueError, match="strength is nan"):
                float(copied)


def test_every_node_that_takes_an_x_T_refuses_one_of_another_model_before_any_pass(layer):
    import os

    import torch
    import hspace_pack.nodes.comfy.pixel_model as pixel_model

    nodes, io = layer
    from hspace_pack.nodes.layer.schema import is_x_T

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "hspace-shapes-ddpm")
    patcher = pixel_model.pixel_model_patcher(*pixel_model.load_pixel_unet_folder(folder))
    unet = patcher.get_model_object("diffusion_model")

    def no_pass(*_):
        raise AssertionError("a U-Net pass ran before the foreign x_T was refused")

    hook = unet.register_forward_pre_hook(no_pass)
    sd_latent = {"samples": torch.zeros(1, 4, 8, 8)}  # an SD latent: 4 channels, the pixel model takes 3
    seen = []
    try:
        for node in nodes.NODES:
            schema = node.define_schema()
            for spec in (s for s in schema.inputs if is_x_T(s)):
                inputs = {s.id: _good_value(s, io) if isinstance(s, io.WidgetInput) else Untouchable()
                          for s in schema.inputs if not s.optional or isinstance(s, io.WidgetInput)}
                inputs = {k: v for k, v in inputs.items() if v is not None}
                inputs.update({s.id: {"samples": torch.zeros(1, 3, 32, 32)} for s in schema.inputs if is_x_T(s)})
                inputs.update(model=patcher, **{spec.id: sd_latent})
                with pytest.raises(ValueError, match=f"^{schema.display_name}: {spec.id}: .*does not belong to this model"):
                    node.execute(**inputs)
                seen.append((schema.node_id, spec.id))
    finally:
        hook.remove()
    assert {"HSpaceAsyrpEdit", "HSpaceJacobianDirections", "HSpaceDirectionExplorer", "HSpaceXTToNative",
            "HSpaceInterpolate", "HSpaceCapture", "HSpaceSlerpContentInject"} <= {n for n, _ in seen}, seen
