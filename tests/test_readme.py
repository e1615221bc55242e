"""The library guide's examples run as written, and the README's commands are the ones CI and the scripts use."""
import glob
import os
import re
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
LIBRARY = os.path.join(ROOT, "docs", "library.md")


def _library_blocks():
    return re.findall(r"```python\n(.*?)```", open(LIBRARY).read(), re.S)


def test_library_examples_run(tmp_path, monkeypatch):
    blocks = _library_blocks()
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, LIBRARY, "exec"), namespace)
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
