"""The ComfyUI adapter: the pack's model interface over a ComfyUI MODEL (``model``), the one-call edited batch
(``edit_batch``), diffusers pixel U-Nets as ComfyUI models (``pixel_model``), the origin an inverted x_T carries
between nodes (``origin``) and the labelled grid pictures of sweeps (``grids``). No node classes live here."""
