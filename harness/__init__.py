"""Run the pack in a real ComfyUI: server lifecycle, HTTP client, UI→API conversion, tiny test models."""
