"""The ComfyUI adapter: the pack's model interface over a ComfyUI MODEL (``model``), the one-call edited batch
(``edit_batch``), diffusers pixel U-Nets as ComfyUI models (``pixel_model``) and a MODEL's noise levels
(``noise_levels``).  No node classes live here, and nothing that is not about ComfyUI: plain helpers (sweep grid
pictures, x_T origins) live in ``nodes.layer``."""
