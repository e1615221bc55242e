"""ComfyUI entry point of the H-Space node pack (nodes live in ``nodes/``; the math in ``hspace_core/``)."""
