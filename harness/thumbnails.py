"""The template browser's thumbnails, workflows/<name>.jpg: what each workflow produces.

Pixel workflows run through the real server (their API graphs, on the bundled demo model) and the thumbnail is their
own contact sheet: inputs, results, and the labelled grid where the workflow makes one. SD workflows need SD weights
this repository does not ship, so theirs is a diagram of the workflow drawn from its graph: its input images (the
photos), the prompt a style is painted from, its stages and the knobs set in it.
"""
from __future__ import annotations

import io
import json
import os

from PIL import Image, ImageDraw, ImageFont, ImageOps

from .contact_sheet import contact_sheet
from .run_workflows import INPUTS, run_workflow, sheet_rows
from .server import REPO, ComfyServer

SIZE = (768, 480)
# the training workflow runs on the tiny test CLIP that harness/tiny_models.py writes (no download here)
TEST_CLIP = {"clip_model": "hspace-tiny-clip", "clip_pretrained": "hspace-tiny-clip.safetensors"}
INJECTIONS = ("HSpaceSlerpContentInject", "HSpaceContentInjectionSampler")
GRID_NODES = ("HSpaceLabelSweepGrid", "HSpaceDirectionExplorer")
KNOBS = ("gamma_sweep", "gamma", "strength_sweep", "strength", "lam", "t_edit", "end_percent", "steps", "cfg")
# the families whose weights this repository does not ship (a workflow's name starts with its prefix)
FAMILIES = {"sd_": "Stable Diffusion 1.5", "sdxl_": "SDXL", "sd35_": "SD3.5", "flux_": "Flux.1"}


def is_sd(name: str) -> bool:
    """SD, SDXL, SD3.5 and Flux workflows need weights this repository does not ship: a diagram, not a run."""
    return name.startswith(tuple(FAMILIES))


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size)


def fit(image: Image.Image) -> Image.Image:
    """Letterbox onto the thumbnail canvas (white), never upscaled past 2× so small results stay crisp."""
    factor = min(SIZE[0] / image.width, SIZE[1] / image.height, 2.0)
    image = image.resize((max(1, int(image.width * factor)), max(1, int(image.height * factor))),
                         Image.NEAREST if factor >= 1 else Image.LANCZOS)
    return ImageOps.pad(image, SIZE, color="white")


def _prefix(node: dict) -> str:
    return node["inputs"]["filename_prefix"].split("/")[-1]


def pixel_thumbnail(name: str, prompt: dict, saved: list[tuple[str, list[bytes]]]) -> Image.Image:
    """The workflow's contact sheet; a sweep shows as its labelled grid (below), not also as the loose batch."""
    sources = {_prefix(n): n["inputs"]["images"][0] for n in prompt.values() if n["class_type"] == "SaveImage"}
    makers = {i for i, n in prompt.items() if n["class_type"] in GRID_NODES}
    grids = {label for label, source in sources.items() if source in makers}
    shown_in_grids = {prompt[i]["inputs"]["images"][0] for i in makers if "images" in prompt[i]["inputs"]}
    loose = {label for label, source in sources.items() if source in shown_in_grids}
    rows = [row for row in sheet_rows(prompt, [s for s in saved if s[0] not in grids | loose]) if row]
    sheet = contact_sheet([(name, rows)], scale=2)
    for label, images in saved:
        if label in grids:  # already upscaled by its node: stacked below at 1×
            grid = Image.open(io.BytesIO(images[0])).convert("RGB")
            both = Image.new("RGB", (max(sheet.width, grid.width), sheet.height + grid.height), "white")
            both.paste(sheet, (0, 0))
            both.paste(grid, (0, sheet.height))
            sheet = both
    return fit(sheet)


def _stage_titles(name: str, prompt: dict) -> list[str]:
    layout = json.load(open(os.path.join(REPO, "workflows", "layout", "stages.json")))
    own = layout["workflows"].get(name, {})
    used = {(own.get("nodes") or {}).get(i) or layout["class_stage"][n["class_type"]] for i, n in prompt.items()}
    return [(own.get("titles") or {}).get(s["name"], s["name"]) for s in layout["stages"] if s["name"] in used]


ROLES = {("HSpaceSlerpContentInject", "content"): "content", ("HSpaceSlerpContentInject", "style_x_T"): "style",
         ("HSpaceDirectionFromExamples", "positive"): "with the attribute",
         ("HSpaceDirectionFromExamples", "negative"): "without it", ("HSpaceAsyrpEdit", "x_T"): "edited",
         ("HSpaceSlerpContentInject", "mask"): "mask"}


def input_role(prompt: dict, node_id: str) -> str:
    """What a loaded image is to the workflow (content, style, mask, an example, edited), found along the links."""
    frontier, seen = [node_id], set()
    while frontier:
        source = frontier.pop(0)
        seen.add(source)
        for target_id, node in prompt.items():
            for input_name, value in node["inputs"].items():
                if isinstance(value, list) and value[0] == source:
                    if (node["class_type"], input_name) in ROLES:
                        return ROLES[node["class_type"], input_name]
                    if target_id not in seen:
                        frontier.append(target_id)
    return "input"


def prompt_text(prompt: dict, node_id: str) -> str:
    """The text of the conditioning ``node_id`` makes: CLIPTextEncode's, CLIPTextEncodeSDXL's text_g, through
    FluxGuidance."""
    inputs = prompt[node_id]["inputs"]
    if isinstance(inputs.get("conditioning"), list):
        return prompt_text(prompt, inputs["conditioning"][0])
    return inputs.get("text", inputs.get("text_g", ""))


def sd_diagram(name: str, prompt: dict) -> Image.Image:
    """Inputs (photos, a prompt the style is painted from) → the workflow's stages → its knobs."""
    canvas = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((16, 12), name, fill="black", font=_font(26))
    family = next(f for prefix, f in FAMILIES.items() if name.startswith(prefix))
    draw.text((16, 46), f"{family} workflow: load its weights to see the result", fill=(90, 90, 90),
              font=_font(16))
    x, y, right = 16, 86, 16
    loads = [(n["inputs"]["image"], input_role(prompt, i)) for i, n in prompt.items() if n["class_type"] == "LoadImage"]
    for image_name, role in loads[:4]:
        image = Image.open(os.path.join(INPUTS, image_name)).convert("RGB")
        scale = Image.NEAREST if image.width < 64 else Image.LANCZOS
        tile = ImageOps.pad(image, (150, 150), scale, color="white")
        canvas.paste(tile, (x, y))
        draw.text((x, y + 152), role if role != "input" else os.path.splitext(image_name)[0][:22], fill="black",
                  font=_font(13))
        right, y = x + 150, y + 178
        if y > SIZE[1] - 170:
            x, y = x + 166, 86
    mixes = "style" in name or any(n["class_type"] in INJECTIONS for n in prompt.values())
    painted = {}  # prompt → what it paints: the style, the examples of a direction (their role) or the result
    for i, n in prompt.items():
        if n["class_type"] == "KSampler":
            role = input_role(prompt, i)
            style = role == "style" or role == "input" and mixes
            label = "style, painted from:" if style else "prompt:" if role == "input" else f"{role}:"
            painted.setdefault(prompt_text(prompt, n["inputs"]["positive"][0]), label)
        elif n["class_type"] == "HSpaceFluxSpaceEdit":
            painted.setdefault(prompt_text(prompt, n["inputs"]["edit"][0]), "edit prompt:")
    for text, label in painted.items():
        if y > SIZE[1] - 170:
            x, y = x + 166, 86
        box = (x, y, x + 150, min(y + 150, SIZE[1] - 30))
        draw.rectangle(box, outline=(60, 60, 140), width=2, fill=(236, 236, 250))
        right = x + 150
        words, lines = text.split(), [""]
        for word in words:
            lines[-1:] = [lines[-1] + " " + word] if _font(13).getlength(lines[-1] + " " + word) < 138 else [lines[-1], word]
        draw.text((x + 6, y + 6), label + "\n" + "\n".join(l.strip() for l in lines), fill="black",
                  font=_font(13), spacing=3)
        y += 178
    stages_x = right + 40
    stages = _stage_titles(name, prompt)
    step = (SIZE[1] - 150) // max(1, len(stages))
    for k, title in enumerate(stages):
        top = 86 + k * step
        draw.rounded_rectangle((stages_x, top, SIZE[0] - 16, top + step - 22), radius=10, outline="black",
                               width=2, fill=(245, 240, 225))
        draw.text((stages_x + 14, top + (step - 22) // 2), title, fill="black", font=_font(20), anchor="lm")
        if k:
            draw.line((stages_x + 60, top - 22, stages_x + 60, top), fill="black", width=3)
            draw.polygon([(stages_x + 53, top - 8), (stages_x + 67, top - 8), (stages_x + 60, top)], fill="black")
    draw.line((right + 8, SIZE[1] // 2, stages_x - 6, SIZE[1] // 2), fill="black", width=3)
    knobs = []
    for n in prompt.values():
        if n["class_type"].startswith("HSpace") and n["class_type"] != "HSpaceDDIMInversion":
            unused = {"percent": "t_edit", "t_edit": "end_percent"}.get(n["inputs"].get("window"))  # the other window's
            shown = [k for k in KNOBS if k != unused]
            knobs += [f"{k} {n['inputs'][k]}" for k in shown if k in n["inputs"] and n["inputs"][k] not in ("", None)
                      and not isinstance(n["inputs"][k], list)]
    text = " · ".join(dict.fromkeys(knobs))
    while text and _font(14).getlength(text) > SIZE[0] - 16 - stages_x:
        text = text[:text.rfind(" · ")] if " · " in text else ""
    draw.text((stages_x, SIZE[1] - 50), text, fill=(40, 40, 40), font=_font(14))
    return canvas


def write_thumbnails(server: ComfyServer, api_dir: str, out_dir: str) -> list[str]:
    """Every API graph in ``api_dir`` → ``out_dir/<name>.jpg``; the names written."""
    written = []
    for file in sorted(f for f in os.listdir(api_dir) if f.endswith(".json")):
        name = file[:-5]
        prompt = json.load(open(os.path.join(api_dir, file)))
        if is_sd(name):
            image = sd_diagram(name, prompt)
        else:
            for node in prompt.values():
                node["inputs"].update({k: v for k, v in TEST_CLIP.items() if k in node["inputs"]})
            saved = run_workflow(server, prompt, os.path.join(server.base, "thumbnails", name))
            image = pixel_thumbnail(name, prompt, saved)
        image.save(os.path.join(out_dir, name + ".jpg"), quality=85)
        written.append(name)
        print(json.dumps({"thumbnail": name + ".jpg", "from": "diagram" if is_sd(name) else "run"}),
              flush=True)
    return written
