"""Start a real ComfyUI server with this pack, talk to it over HTTP, stop it.  Standard library only."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = os.environ.get("HSPACE_HOME", os.path.join(os.path.expanduser("~"), ".cache", "hspace-nodes"))
PACK_NAME = "hspace-nodes"
TEST_NODES = "hspace-test-nodes"  # harness/comfy_nodes: stand-ins the tests need (a tiny SDXL loader), not the pack


def comfy_dir() -> str:
    path = os.environ.get("HSPACE_COMFYUI", os.path.join(STATE, "ComfyUI"))
    if not os.path.isfile(os.path.join(path, "main.py")):
        raise RuntimeError(f"No ComfyUI at {path}: run scripts/setup.sh or set HSPACE_COMFYUI.")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base(base: str, models_cache: str | None = None) -> None:
    """base/: custom_nodes/<pack> → this repo, input/ ← workflows/inputs, models/ ← the cached tiny test models and
    custom_nodes/<TEST_NODES> → harness/comfy_nodes (when ``models_cache`` is given), output/, user/."""
    for sub in ("custom_nodes", "input", "output", "user/default", "models"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    link = os.path.join(base, "custom_nodes", PACK_NAME)
    if not os.path.islink(link):
        os.symlink(REPO, link)
    shutil.copytree(os.path.join(REPO, "workflows", "inputs"), os.path.join(base, "input"), dirs_exist_ok=True)
    if models_cache is not None:
        from .tiny_models import VERSION

        test_nodes = os.path.join(base, "custom_nodes", TEST_NODES)
        if not os.path.islink(test_nodes):
            os.symlink(os.path.join(REPO, "harness", "comfy_nodes"), test_nodes)

        os.makedirs(models_cache, exist_ok=True)
        if not os.path.exists(os.path.join(models_cache, f".tiny-models-v{VERSION}")):
            subprocess.run([sys.executable, "-m", "harness.tiny_models", comfy_dir(), models_cache], cwd=REPO,
                           check=True, env={**os.environ, "PYTHONPATH": REPO})
        shutil.copytree(models_cache, os.path.join(base, "models"), copy_function=_link, dirs_exist_ok=True)
    with open(os.path.join(base, "user", "default", "comfy.settings.json"), "w") as f:
        json.dump({"Comfy.TutorialCompleted": True}, f)  # no first-run dialog over the canvas


def _link(src: str, dst: str) -> None:
    """Hard link instead of copying the weights; an existing file stays."""
    if not os.path.exists(dst):
        os.link(src, dst)


def extra_args_from_env() -> list[str]:
    """More ComfyUI command-line flags from HSPACE_COMFY_ARGS (e.g. "--disable-dynamic-vram"): a test lane's."""
    return shlex.split(os.environ.get("HSPACE_COMFY_ARGS", ""))


class ComfyServer:
    def __init__(self, base: str, log_path: str, extra_args: list[str] | None = None, cpu: bool = True):
        """``extra_args``: more flags for ComfyUI's main.py, after the harness's own; HSPACE_COMFY_ARGS by default.
        ``cpu``: run with --cpu (the tests); off, ComfyUI picks its device (benchmarks/gpu_rules.py on a GPU)."""
        self.base, self.log_path, self.port, self.proc = base, log_path, free_port(), None
        self.cpu = cpu
        self.client_id = uuid.uuid4().hex
        self.extra_args = extra_args_from_env() if extra_args is None else list(extra_args)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> "ComfyServer":
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "PYTHONPYCACHEPREFIX": os.path.join(self.base, "pycache")}
        cmd = [sys.executable, "-u", "main.py", *(["--cpu"] if self.cpu else []), "--listen", "127.0.0.1",
               "--port", str(self.port), "--base-directory", self.base, "--database-url", "sqlite:///:memory:",
               "--disable-api-nodes", "--disable-auto-launch", "--dont-print-server", "--disable-all-custom-nodes",
               "--whitelist-custom-nodes", PACK_NAME, TEST_NODES, *self.extra_args]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=comfy_dir(), stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited during start-up; see {self.log_path}:\n{self.tail()}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc:
            self.log.close()

    def tail(self, n: int = 40) -> str:
        with open(self.log_path) as f:
            return "".join(f.readlines()[-n:])

    # --- HTTP ---
    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            body = r.read()
            return json.loads(body) if r.headers.get_content_type() == "application/json" else body

    def post(self, path: str, payload: dict):
        req = urllib.request.Request(self.url + path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                data = r.read()
                return r.status, (json.loads(data) if data else {})
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def queue(self, prompt: dict) -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise PromptRejected(body)
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.tail()}")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def images(self, entry: dict, node_id: str) -> list[bytes]:
        out = []
        for img in entry["outputs"].get(node_id, {}).get("images", []):
            q = urllib.parse.urlencode({"filename": img["filename"], "subfolder": img["subfolder"], "type": img["type"]})
            out.append(self.get(f"/view?{q}"))
        return out


class PromptRejected(Exception):
    def __init__(self, body: dict):
        super().__init__(json.dumps(body)[:2000])
        self.body = body


def error_message(entry: dict) -> str:
    """The execution_error message of a failed prompt ('' when it succeeded)."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_message')}"
    return ""
