"""The ComfyUI adapter: the pack's model interface over a ComfyUI MODEL (``model``), the one-call edited batch
(``edit_batch``) and diffusers pixel U-Nets as ComfyUI models (``pixel_model``). No node classes live here."""
