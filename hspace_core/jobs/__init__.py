"""Batch jobs over folders of images (docs/batch.md): invert, capture, PCA, probe, edit, inject and CLIP training,
split into shards that are written atomically and skipped when a job is run again, on one machine or on Ray."""
from .images import ImageProblem, ImageSpec, list_images, read_image
from .job import JobResult, run_job
from .moments import HMoments, merge_all
from .plan import JobSpec, Manifest, item_seed

__all__ = ["HMoments", "ImageProblem", "ImageSpec", "JobResult", "JobSpec", "Manifest", "item_seed", "list_images",
           "merge_all", "read_image", "run_job"]
