"""End to end through a real server started with latent previews on: the pack's long nodes and SAMPLERs send
ComfyUI's latent preview images on the websocket, at the size of their latent grid, and a pixel-space model's
preview is the image itself."""
import asyncio
import io
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image

from e2e_helpers import png
from harness.server import STATE, ComfyServer, error_message, extra_args_from_env, prepare_base

pytestmark = pytest.mark.e2e
STEPS, WIDTH, HEIGHT, PREVIEW_SIZE = 6, 64, 48, 64  # non-square, so the preview's shape shows the latent grid
PIXEL = "bundled/hspace-shapes-ddpm"


@pytest.fixture(scope="module")
def previews_server(tmp_path_factory):
    """A server of its own: the suite's runs without previews (ComfyUI's default)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = str(tmp_path_factory.mktemp("comfy-previews"))
    prepare_base(base, os.path.join(STATE, "e2e-models"))
    args = ["--preview-method", "latent2rgb", "--preview-size", str(PREVIEW_SIZE), *extra_args_from_env()]
    server = ComfyServer(base, os.path.join(base, "server.log"), extra_args=args).start()
    try:
        yield server
    finally:
        server.stop()


def _node(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


def _scaled(node_id, name):
    return {f"{node_id}_load": _node("LoadImage", image=name),
            node_id: _node("ImageScale", image=[f"{node_id}_load", 0], upscale_method="bicubic", width=WIDTH,
                           height=HEIGHT, crop="disabled")}


def _edit_graph(model, vae, strength, **common):
    """Invert the content and the style image, a direction from the two, an Asyrp Edit of the content (decoded
    and saved as "save")."""
    inversion = {"model": model, "vae": vae, "steps": STEPS, "refine_iters": 0, **common}
    return {**_scaled("scaled", "hspace_content.png"), **_scaled("style_scaled", "hspace_style.png"),
            "inv": _node("HSpaceDDIMInversion", image=["scaled", 0], **inversion),
            "inv_s": _node("HSpaceDDIMInversion", image=["style_scaled", 0], **inversion),
            "dir": _node("HSpaceDirectionFromExamples", positive=["inv", 1], negative=["inv_s", 1], form="global",
                         name="content"),
            "edit": _node("HSpaceAsyrpEdit", model=model, x_T=["inv", 0], direction=["dir", 0], strength=strength,
                          steps=STEPS, t_edit=400, strength_sweep="", seed=0, allow_other_model=False, **common),
            "decode": _node("VAEDecode", samples=["edit", 0], vae=vae),
            "save": _node("SaveImage", images=["decode", 0], filename_prefix="e2e/previews")}


def _sd_prompt():
    return {"ckpt": _node("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors"),
            "pos": _node("CLIPTextEncode", text="a simple flat illustration of a shape", clip=["ckpt", 1]),
            **_edit_graph(["ckpt", 0], ["ckpt", 2], 1.0, cfg=1.0, edit_branches="cond", positive=["pos", 0]),
            # the native path: the pack's Asyrp SAMPLER in SamplerCustomAdvanced
            "native": _node("HSpaceXTToNative", model=["ckpt", 0], x_T=["inv", 0], steps=STEPS),
            "guider": _node("BasicGuider", model=["ckpt", 0], conditioning=["pos", 0]),
            "asyrp": _node("HSpaceAsyrpSampler", direction=["dir", 0], strength=1.0, window="t_edit", t_edit=400,
                           start_percent=0.0, end_percent=0.6, seed=0, edit_branches="cond",
                           allow_other_model=False),
            "sample": _node("SamplerCustomAdvanced", noise=["native", 0], guider=["guider", 0], sampler=["asyrp", 0],
                            sigmas=["native", 1], latent_image=["inv", 0]),
            "save_native": _node("SaveLatent", samples=["sample", 0], filename_prefix="e2e/previews_native")}


def _pixel_prompt():
    common = {"cfg": 1.0, "edit_branches": "cond"}
    return {"unet": _node("HSpaceLoadPixelUNet", unet_folder=PIXEL, repo_id=""),
            "vae": _node("VAELoader", vae_name="pixel_space"),
            **_edit_graph(["unet", 0], ["vae", 0], 0.0, **common),
            "train": _node("HSpaceTrainAsyrpDirection", model=["unet", 0], images=["scaled", 0], vae=["vae", 0],
                           source_text="a", target_text="b", form="global", epochs=1, lr=0.5, steps=STEPS,
                           t_edit=400, inversion_steps=STEPS, batch_size=1, clip_weight=1.0, recon_weight=3.0,
                           lr_step_epochs=3, lr_gamma=0.1, clip_reference="source_prediction", log_clip_loss=True,
                           init_scale=0.2, clip_model="hspace-tiny-clip",
                           clip_pretrained="hspace-tiny-clip.safetensors", seed=0, **common),
            "show": _node("PreviewAny", source=["train", 1])}


def _run_with_previews(server, prompt) -> tuple[dict, dict]:
    """Queue ``prompt`` and follow the websocket: ({node id: [preview images]}, history entry).  A binary frame is
    the node's that ComfyUI last said is executing (frames and messages share one ordered socket)."""
    import aiohttp

    async def follow():
        frames, node = {}, None
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{server.port}/ws?clientId={server.client_id}") as ws:
                prompt_id = server.queue(prompt)
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        frames.setdefault(node, []).append(_preview_image(msg.data))
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    m = json.loads(msg.data)
                    data = m.get("data", {})
                    if m["type"] == "executing" and data.get("prompt_id") == prompt_id:
                        node = data.get("node")
                    if m["type"] in ("execution_success", "execution_error", "execution_interrupted") \
                            and data.get("prompt_id") == prompt_id:
                        break
        return frames, prompt_id

    frames, prompt_id = asyncio.run(asyncio.wait_for(follow(), 300))
    entry = server.wait(prompt_id)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + server.tail()
    return frames, entry


def _preview_image(frame: bytes) -> Image.Image:
    """A binary websocket frame → its image: event 1 (PREVIEW_IMAGE: image type, then JPEG/PNG bytes) or event 4
    (PREVIEW_IMAGE_WITH_METADATA: metadata length, metadata JSON, image bytes)."""
    (event,) = struct.unpack(">I", frame[:4])
    if event == 1:
        return Image.open(io.BytesIO(frame[8:])).convert("RGB")
    assert event == 4, f"binary websocket event {event} is not a preview image"
    (length,) = struct.unpack(">I", frame[4:8])
    return Image.open(io.BytesIO(frame[8 + length:])).convert("RGB")


def _contained(grid_w, grid_h):
    """The preview's size: the previewer's image (one pixel per latent cell) fitted into --preview-size."""
    scale = PREVIEW_SIZE / max(grid_w, grid_h)
    return round(grid_w * scale), round(grid_h * scale)


def _check(frames, node, size, at_least=STEPS - 1):
    got = frames.get(node, [])
    assert len(got) >= at_least, f"{node}: {len(got)} previews for {STEPS} steps ({ {k: len(v) for k, v in frames.items()} })"
    assert {im.size for im in got} == {size}, f"{node}: preview sizes {sorted({im.size for im in got})}, want {size}"
    return got


def test_previews_arrive_for_inversion_asyrp_edit_and_the_asyrp_sampler(previews_server):
    frames, _ = _run_with_previews(previews_server, _sd_prompt())
    size = _contained(WIDTH // 8, HEIGHT // 8)  # the SD latent grid, through latent2rgb's factors
    assert size == (64, 48)
    _check(frames, "inv", size, at_least=2 * STEPS - 1)  # the inversion's steps, then its reconstruction's
    _check(frames, "edit", size)
    _check(frames, "sample", size)


def test_a_pixel_models_preview_is_the_image_itself_and_clip_training_previews(previews_server):
    frames, entry = _run_with_previews(previews_server, _pixel_prompt())
    size = _contained(WIDTH, HEIGHT)  # PixelSpace: one latent cell per pixel, identity latent2rgb factors
    assert size == (WIDTH, HEIGHT)
    last = np.asarray(_check(frames, "edit", size)[-1], dtype=float)
    out = png(previews_server.images(entry, "save")[0]).astype(float)[..., :3]
    assert out.shape == last.shape
    # the last step's predicted x0 is the output up to the last DDIM step and JPEG: the image, not a colour map
    assert np.abs(last - out).mean() < 8.0, np.abs(last - out).mean()
    assert out.std() > 10.0
    _check(frames, "train", size)
