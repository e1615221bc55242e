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
    for script in ("scripts/test.sh", "scripts/demo.sh", "scripts/setup.sh"):
        assert os.path.exists(os.path.join(ROOT, script)), script


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
    for fine in ("workflows/pixel_native_sampler.json", "nodes/comfy/model.run_in_comfy", "docs/design.md:3",
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
