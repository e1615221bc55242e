"""H-Space Train Asyrp Direction's expert knobs, through a real ComfyUI server: they are grouped as core groups its
expert knobs (the schema's `advanced` flag: hidden until "Show Advanced", nothing renamed, moved or made optional),
so saved workflows keep loading (the UI file's widget order, the API prompt's names) and an API prompt that sets
them still trains with their meaning: zero loss weights leave the seeded initial Δh (init_scale × N(0, 1) from
seed) untouched, and lr_gamma = 0 after lr_step_epochs = 1 makes the second epoch learn nothing."""
import os

import pytest
import torch

from e2e_helpers import CLIP_TEST_OVERRIDES
from harness.server import error_message

pytestmark = pytest.mark.e2e
NODE = "HSpaceTrainAsyrpDirection"
PIXEL, STEPS = "bundled/hspace-shapes-ddpm", 4
# every input, in the order saved UI workflows store their widgets (never reorder, rename or drop one)
INPUTS = {"required": ["model", "images", "vae", "source_text", "target_text", "form", "epochs", "lr", "steps",
                       "t_edit", "inversion_steps", "batch_size", "clip_weight", "recon_weight", "lr_step_epochs",
                       "lr_gamma", "clip_reference", "log_clip_loss", "init_scale", "clip_model", "clip_pretrained",
                       "seed", "cfg", "edit_branches"],
          "optional": ["positive", "negative", "site", "window", "start_percent", "end_percent"]}
# what the editor shows; the rest are expert knobs (the official recipe's values, CLIP, guidance, h site, window)
SHOWN = {"model", "images", "vae", "source_text", "target_text", "form", "epochs", "lr", "steps", "t_edit", "seed",
         "positive", "negative"}


def test_expert_knobs_are_advanced_and_every_input_keeps_its_place(comfy):
    info = comfy.object_info[NODE]
    assert {k: v for k, v in info["input_order"].items() if v} == INPUTS
    specs = {name: spec for section in ("required", "optional") for name, spec in info["input"][section].items()}
    advanced = {name for name, spec in specs.items() if len(spec) > 1 and spec[1].get("advanced")}
    assert advanced == set(specs) - SHOWN and len(advanced) == 17


def _train(comfy, name: str, **knobs) -> torch.Tensor:
    """Train a global Δh on the bundled pixel U-Net through the server (every input set by name, as an API prompt
    does) and return it, saved and loaded back."""
    from hspace_core import Direction

    inputs = {"model": ["unet", 0], "images": ["images", 0], "vae": ["vae", 0], "source_text": "a circle",
              "target_text": "a square", "form": "global", "epochs": 1, "lr": 0.5, "steps": STEPS, "t_edit": 400,
              "inversion_steps": STEPS, "batch_size": 1, "clip_weight": 1.0, "recon_weight": 3.0, "lr_step_epochs": 3,
              "lr_gamma": 0.1, "clip_reference": "source_prediction", "log_clip_loss": True, "init_scale": 0.2,
              **CLIP_TEST_OVERRIDES, "seed": 0, "cfg": 1.0, "edit_branches": "cond", **knobs}
    prompt = {"unet": {"class_type": "HSpaceLoadPixelUNet", "inputs": {"unet_folder": PIXEL, "repo_id": ""}},
              "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
              "one": {"class_type": "LoadImage", "inputs": {"image": "hspace_circle_1.png"}},
              "two": {"class_type": "LoadImage", "inputs": {"image": "hspace_circle_2.png"}},
              "images": {"class_type": "ImageBatch", "inputs": {"image1": ["one", 0], "image2": ["two", 0]}},
              "train": {"class_type": NODE, "inputs": inputs},
              "save": {"class_type": "HSpaceSaveDirection",
                       "inputs": {"direction": ["train", 0], "filename_prefix": f"e2e/expert_{name}"}}}
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    saved = entry["outputs"]["save"]["text"][0]
    return Direction.load(os.path.join(comfy.base, "models", "hspace_directions", saved)).delta


def test_an_api_prompt_setting_the_expert_knobs_trains_with_their_meaning(comfy):
    # zero loss weights: no gradient, so Δh stays its seeded start init_scale·N(0, 1) (clip_directions._parameters_for)
    start = _train(comfy, "still", clip_weight=0.0, recon_weight=0.0, init_scale=0.37, seed=5, batch_size=2,
                   clip_reference="input", log_clip_loss=False)
    expected = torch.randn(start.shape, generator=torch.Generator().manual_seed(5)) * 0.37
    assert torch.equal(start.float(), expected)
    # the StepLR knobs: lr × 0 after one epoch makes a second epoch change nothing; the default schedule (×0.1 every
    # 3 epochs) lets it learn
    one = _train(comfy, "one_epoch", batch_size=2)
    frozen = _train(comfy, "frozen", batch_size=2, epochs=2, lr_step_epochs=1, lr_gamma=0.0)
    learning = _train(comfy, "two_epochs", batch_size=2, epochs=2)
    seeded = torch.randn(one.shape, generator=torch.Generator().manual_seed(0)) * 0.2
    assert (one - seeded).abs().max() > 1e-3 * seeded.abs().max()  # it trained at all
    assert torch.equal(frozen, one)
    assert (learning - one).abs().max() > 1e-3 * one.abs().max()
