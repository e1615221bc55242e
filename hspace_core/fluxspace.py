"""FluxSpace's edits (Dalva, Venkatesh, Yanardag, CVPR 2025): a semantic, linearly editable space in the attention
outputs of Flux's joint transformer blocks.

Fine-grained edit (FluxSpace §3, its orthogonal projection): with ℓ(x, c) the attention output of a joint block for
the prompt c, ℓ(x, c_e) for the edit prompt and ℓ(x, ∅) for the empty prompt, at the same x and noise level,

    ℓ̂ = ℓ(x, c) + λ·ℓ⊥,    ℓ⊥ = ℓ(x, c_e) − proj_{ℓ(x, ∅)} ℓ(x, c_e),
    proj_b a = (⟨a, b⟩ / ⟨b, b⟩)·b,

removing from the edit what the empty prompt already puts there (the content every prompt shares).  A base prompt
c_b (e.g. the image's own prompt) may take ∅'s place, ℓ⊥ = ℓ(x, c_e) − proj_{ℓ(x, c_b)} ℓ(x, c_e): then only what
the edit adds to that prompt is applied (the FluxSpace implementation read projects the coarse edit on the prompt's
own pooled embedding, its eq. 9).  The pack takes the inner product per image token over the channels (each token's
attention output is one vector of the width).

Coarse edit: the pooled text embedding y (CLIP's, which modulates every block) moves the same way,
ŷ = y + λ_coarse·(y_e − proj_{y_∅} y_e), per row.  Where the paper's code differs in detail is not checked here
(docs/transformers.md).
"""
from __future__ import annotations

import torch


def orthogonal_part(edit: torch.Tensor, null: torch.Tensor, dim: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """edit − (⟨edit, null⟩/⟨null, null⟩)·null along ``dim`` (channels of h's spatial view, or a pooled vector's)."""
    dot = (edit * null).sum(dim, keepdim=True)
    norm = (null * null).sum(dim, keepdim=True).clamp_min(eps)
    return edit - dot / norm * null


def fluxspace_edit(base: torch.Tensor, edit: torch.Tensor, null: torch.Tensor, lam: float, dim: int = 1):
    """ℓ̂ = ℓ(x, c) + λ·(ℓ(x, c_e) − proj_{ℓ(x, ∅)} ℓ(x, c_e)) (module docstring), in the base's dtype."""
    work = torch.promote_types(base.dtype, torch.float32)
    out = base.to(work) + lam * orthogonal_part(edit.to(work), null.to(work), dim)
    return out.to(base.dtype)
