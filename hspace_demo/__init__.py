"""The bundled demo: a procedural shapes dataset, its pixel read-outs, and the small DDPM trained on it."""
