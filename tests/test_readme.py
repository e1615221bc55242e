"""The library guide's examples run as written, and the README's commands are the ones CI and the scripts use."""
import glob
import os
import re
import tomllib

import pytest
from docs_code import run_blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
LIBRARY = os.path.join(ROOT, "docs", "library.md")


def _library_blocks():
    return re.findall(r"```python\n(.*?)```", open(LIBRARY).read(), re.S)


def test_library_examples_run(tmp_path, monkeypatch):
    blocks = _library_blocks()
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)
    namespace = run_blocks(blocks, tmp_path, "library")
    assert namespace["frames"].shape == (5, 3, 32, 32)
    assert namespace["mixed"].shape == (1, 3, 32, 32)
    assert namespace["latents"].trajectory.branches == ("uncond", "cond")


def test_readme_links_the_library_guide():
    assert "(docs/library.md)" in README


def test_readme_stays_short():
    assert len(README.encode()) < 10 * 1024, "README.md is for ComfyUI users: put details in docs/ and link them"


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"^(bash scripts/\S+)", README, re.M)
    assert "bash scripts/test.sh" in commands and "bash scripts/demo.sh" in commands
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "bash scripts/test.sh" in ci
    for script in ("scripts/test.sh", "scripts/demo.sh", "scripts/setup.sh", "scripts/setup_tests.sh"):
        assert os.path.exists(os.path.join(ROOT, script)), script


def test_the_demo_installs_no_browser():
    """demo.sh needs a venv and ComfyUI, not the editor tests' Chromium (apt) or playwright-core (npm): those are
    in setup_tests.sh, which only test.sh sources."""
    scripts = {name: re.sub(r"(^|\s)#.*", "", open(os.path.join(ROOT, "scripts", name)).read())  # code, not comments
               for name in ("demo.sh", "setup.sh", "test.sh")}
    assert "setup.sh" in scripts["demo.sh"] and "setup_tests.sh" not in scripts["demo.sh"]
    assert not re.search(r"apt-get|npm|chromium|requirements-dev", scripts["setup.sh"], re.I)
    assert "setup_tests.sh" in scripts["test.sh"]


def test_requirements_match_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    reqs = [l.strip() for l in open(os.path.join(ROOT, "requirements.txt")) if l.strip() and not l.startswith("#")]
    assert sorted(reqs) == sorted(project["project"]["dependencies"])
    assert "comfyui" not in project["project"]["name"].lower()
    assert project["project"]["license"] == {"file": "LICENSE"}
    assert {"PublisherId", "DisplayName", "Icon"} <= set(project["tool"]["comfy"])
    assert "Repository" in project["project"]["urls"]


def test_core_never_imports_comfy():
    pattern = re.compile(r"^\s*(import|from)\s+(comfy|comfy_api|comfy_extras|folder_paths|nodes)\b", re.M)
    for dirpath, _, files in os.walk(os.path.join(ROOT, "hspace_core")):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(dirpath, name)).read()
                assert not pattern.search(text), os.path.join(dirpath, name)


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PAGES = ["README.md", "CONTRIBUTING.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _anchors(path: str) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)
    titles = re.findall(r"^#+\s+(.*?)\s*$", text, re.M)
    return {"".join(c for c in t.lower() if c.isalnum() or c in " -_").replace(" ", "-") for t in titles}


# A code span that names a path in this repository (`workflows/x.json`, `nodes/comfy/model.py:53`,
# `tests/test_x.py::test_y`) or a module's function (`nodes/comfy/model.sigma_table`); ComfyUI's folders (`models/...`)
# and spans with spaces or placeholders are not paths here.
SPAN = re.compile(r"(?<!`)`([^`\s]+)`(?!`)")
REPO_DIRS = {n for n in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, n)) and not n.startswith(".")} - {"models"}


def _missing_path(span: str) -> str | None:
    """What a code span names that does not exist, or None (also for spans that are not repository paths)."""
    path = re.sub(r"(::\S*|:\d+(-\d+)?)$", "", span).rstrip("/.,")
    if "/" not in path or any(c in path for c in "*<>{}$~|()=") or path.split("/")[0] not in REPO_DIRS:
        return None
    if os.path.exists(os.path.join(ROOT, path)):
        return None
    module, _, name = path.rpartition(".")
    source = os.path.join(ROOT, module + ".py")
    if module and os.path.isfile(source) and re.search(rf"^(def|class)\s+{name}\b|^{name}\s*[:=]",
                                                       open(source).read(), re.M):
        return None
    return path


@pytest.mark.parametrize("page", PAGES)
def test_every_path_in_a_code_span_exists(page):
    text = re.sub(r"```.*?```", "", open(os.path.join(ROOT, page)).read(), flags=re.S)
    missing = [span for span in SPAN.findall(text) if _missing_path(span)]
    assert not missing, f"{page} names paths that do not exist: {missing}"


def test_the_code_span_check_finds_a_missing_path():
    assert _missing_path("workflows/native_asyrp_sampler.json") == "workflows/native_asyrp_sampler.json"
    assert _missing_path("nodes/comfy/model.no_such_function") == "nodes/comfy/model.no_such_function"
    for fine in ("workflows/pixel_native_sampler.json", "nodes/comfy/run.run_in_comfy", "docs/design.md:3",
                 "tests/test_readme.py::test_readme_stays_short", "models/hspace_directions", "comfy/samplers.py",
                 "a b/c.py"):
        assert _missing_path(fine) is None, fine


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    path = os.path.join(ROOT, page)
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        assert os.path.exists(linked), f"{page}: {target} does not exist"
        if anchor and linked.endswith(".md"):
            assert anchor in _anchors(linked), f"{page}: {target}: no such heading"


def test_the_guide_has_a_section_per_sample_workflow():
    sections = set(re.findall(r"^## (\S+)\s*$", open(os.path.join(ROOT, "docs", "guide.md")).read(), re.M))
    shipped = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "workflows", "*.json"))}
    assert shipped <= sections, f"docs/guide.md needs a section per workflow: {sorted(shipped - sections)}"



def _image(path) -> "np.ndarray":
    """An RGB image file as floats in [−1, 1], (3, H, W) (the read-outs' layout)."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), np.float64).transpose(2, 0, 1) / 127.5 - 1


@pytest.mark.e2e
def test_the_figure_caption_says_what_the_asyrp_sweep_does(main_job):
    """The caption: the direction is circles − squares (+2 toward the circles), the triangle keeps its shape at every
    strength and changes colour, dark olive at −2 and orange at +2. Read from the main job's own run (the figure's)."""
    import json

    from hspace_demo.readouts import classify_shape, foreground_colour
    from hspace_demo.shapes import SHAPES

    caption = " ".join(re.search(r"\n\*The bundled 32×32 demo model.*?\*\n", README, re.S).group(0).split())
    assert "circles − squares (+2 is toward the circles)" in caption
    assert "keeps its shape and changes colour, dark olive at −2, orange at +2" in caption
    graph = json.load(open(os.path.join(ROOT, "workflows", "api", "pixel_asyrp_edit.json")))
    examples = next(n for n in graph.values() if n["class_type"] == "HSpaceDirectionFromExamples")["inputs"]

    def example_images(side):  # Direction from Examples ← DDIM Inversion ← ImageBatch ← LoadImage ×2
        batch = graph[graph[examples[side][0]]["inputs"]["image"][0]]["inputs"]
        return sorted(graph[batch[k][0]]["inputs"]["image"] for k in ("image1", "image2"))

    assert example_images("positive") == ["hspace_circle_1.png", "hspace_circle_2.png"]
    assert example_images("negative") == ["hspace_square_1.png", "hspace_square_2.png"]
    edit = next(n for n in graph.values() if n["class_type"] == "HSpaceAsyrpEdit")["inputs"]
    strengths = [float(s) for s in edit["strength_sweep"].split(",")]
    assert strengths[0] == -2 and strengths[-1] == 2 and 0 in strengths
    out = main_job[0] / "pixel_asyrp_edit"
    sweep = [_image(out / f"pixel_edit_sweep_{k}.png") for k in range(len(strengths))]
    assert [SHAPES[classify_shape(img)[0]] for img in sweep] == ["triangle"] * len(strengths)
    # the foreground's median colour (RGB in [0, 1]); measured: 0 → (0.96, 0.85, 0.20), −2 → (0.25, 0.34, 0.15),
    # +2 → (1.00, 0.76, 0.28): −2 loses more than half its brightness, +2 keeps its red and loses green
    plain, darker, orange = (foreground_colour(sweep[strengths.index(s)]) for s in (0.0, -2.0, 2.0))
    assert darker.sum() < 0.5 * plain.sum(), (darker, plain)
    assert orange[0] >= plain[0] - 0.02 and orange[1] < plain[1] - 0.04 and orange[1] < orange[0] - 0.15, (orange, plain)


@pytest.mark.e2e
def test_the_interpolation_ends_are_the_inputs_reconstructions(main_job):
    """The caption and docs/guide.md: the interpolation's end frames are the two images' reconstructions (the other
    two workflows save them; their DDIM Inversions have the same settings), within one 8-bit level, and so within a
    few levels of the inputs on average."""
    import numpy as np

    assert "whose end frames are their reconstructions" in " ".join(README.split())
    out = main_job[0]
    frames = sorted(out.glob("interpolation/interpolation_*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    first, last = _image(frames[0]), _image(frames[-1])
    content = _image(out / "pixel_asyrp_edit" / "pixel_edit_reconstruction_0.png")
    style = _image(out / "pixel_content_injection" / "pixel_style_reconstruction_0.png")
    level = 1 / 127.5
    assert np.abs(first - content).max() <= level * 1.01 and np.abs(last - style).max() <= level * 1.01
    inputs = [_image(os.path.join(ROOT, "workflows", "inputs", f"hspace_{name}.png")) for name in ("content", "style")]
    errors = [np.abs(frame - x).mean() / level for frame, x in zip((first, last), inputs)]
    assert max(errors) < 4, errors  # measured 2.2 and 2.8 levels: the inversions' reconstruction error


def test_the_contact_sheet_shows_a_gridded_sweep_once():
    """The README's figure: a sweep that a saved H-Space Label Sweep Grid shows is not also a row of its own; other
    batches (the interpolation's frames) are."""
    import json

    from harness.run_workflows import save_label, sheet_rows

    def rows(name, batch):
        prompt = json.load(open(os.path.join(ROOT, "workflows", "api", f"{name}.json")))
        saved = [(save_label(n), [b""] * (5 if save_label(n) in batch else 1))
                 for n in prompt.values() if n["class_type"] == "SaveImage"]
        return [[label for label, _ in row] for row in sheet_rows(prompt, saved)[1:]]  # after the inputs' row

    assert rows("pixel_asyrp_edit", {"pixel_edit_sweep"}) == [["pixel_edit_reconstruction", "pixel_edit_grid"]]
    assert rows("interpolation", {"interpolation"}) == [[], [f"interpolation {k}" for k in range(5)]]
