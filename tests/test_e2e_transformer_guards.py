"""Guards on transformers (issue 38): Cancel lands within one block pass and leaves no hook or patch behind, and
trajectories from another site, grid or model are refused naming the setting.  In-process on the tiny Flux of
harness/tiny_dit.py (what happens inside one model pass), then through a real ComfyUI server (tiny Flux and SD3 served
by the test-only loaders, as in test_e2e_transformers.py)."""
import pytest
import torch

from harness.tiny_dit import flux_conditioning
from test_transformers import direction, euler, sample, sigmas_of


# --- in-process: an interrupt inside a block pass ---------------------------------------------------------------

def _hooks(module: torch.nn.Module) -> int:
    """Forward hooks and pre-hooks left on ``module`` and everything under it."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _fluxspace(model):
    import hspace_pack.nodes.fluxspace as fluxspace

    return fluxspace.FluxSpaceEdit.execute(model, flux_conditioning(5), flux_conditioning(6), 1.0, 0.0, 0.0, 1.0,
                                           "all").result[0]


def _asyrp(site):
    def sampler(model):
        import hspace_pack.nodes.samplers as nodes

        return nodes.AsyrpSampler.execute(direction(model, site), 1.0, "percent", 500, 0.0, 1.0, 0,
                                          allow_other_model=True).result[0]

    return sampler


RUNS = {  # name → (MODEL to sample given the tiny Flux, SAMPLER given it), each with the dit patch at double.1
    "asyrp double.1.attn": (lambda m: m, _asyrp("double.1.attn")),
    "asyrp double.1": (lambda m: m, _asyrp("double.1")),
    "fluxspace": (_fluxspace, lambda m: euler()),
}


@pytest.mark.parametrize("run", RUNS)
def test_an_interrupt_in_a_block_pass_lands_at_the_next_patched_block_and_leaves_no_hook(pack, flux, run):
    """/interrupt sets ComfyUI's flag; here the flag is set while block double.0 runs, in the first model pass.  The
    dit patch at double.1 raises ComfyUI's InterruptProcessingException before its block runs, in that same pass
    (without the check the pass would run on to its end); nothing is left behind: no forward hook on any module (the
    attention site's hook on img_attn.proj), no dit patch on the MODEL, and euler afterwards is the image before
    bit for bit.  Also an interrupt raised inside the patched block itself (under the live attention hook)."""
    import comfy.model_management as mm

    make_model, make_sampler = RUNS[run]
    dm = flux.get_model_object("diffusion_model")
    sigmas = sigmas_of(flux, 4)
    before = sample(flux, euler(), sigmas, flux_conditioning, 1.0)
    hooks = _hooks(dm)
    ran = []

    def interrupt(module, args, out):
        mm.interrupt_current_processing(True)

    watched = [dm.double_blocks[0].register_forward_hook(interrupt),
               dm.double_blocks[1].register_forward_pre_hook(lambda m, a: ran.append("double.1"))]
    try:
        with pytest.raises(mm.InterruptProcessingException):
            sample(make_model(flux), make_sampler(flux), sigmas, flux_conditioning, 1.0)
    finally:
        for handle in watched:
            handle.remove()
        mm.interrupt_current_processing(False)
    assert ran == [], "the patched block ran after the interrupt"

    def inside(module, args):  # an interrupt checked inside the block, e.g. by a patch nested in ours
        raise mm.InterruptProcessingException()

    handle = dm.double_blocks[1].img_mlp.register_forward_pre_hook(inside)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            sample(make_model(flux), make_sampler(flux), sigmas, flux_conditioning, 1.0)
    finally:
        handle.remove()
    assert _hooks(dm) == hooks
    assert "dit" not in flux.model_options["transformer_options"].get("patches_replace", {})
    assert torch.equal(sample(flux, euler(), sigmas, flux_conditioning, 1.0), before)


@pytest.fixture(scope="module")
def flux(pack):
    from harness.tiny_dit import tiny_flux

    return tiny_flux()
