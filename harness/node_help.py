"""The prose of each node's help page (web/docs/<node id>.md), the one place it is written.

``harness/node_docs.py`` renders the pages from this and the node's registered schema (the same schema docs/nodes.md
is made from): what the node does (``does``, two sentences), a small example (``example``), the paper and equation it
follows (``paper``) and what to do when it refuses something (``refusals``).  Every node refuses out-of-range or
wrong-type widgets the same way (the layer's checks, docs/hardening.md); ``refusals`` says what is particular to it.
"""
from __future__ import annotations

ASYRP = "Kwon, Jeong, Uh: *Diffusion Models Already Have a Semantic Latent Space* (Asyrp, ICLR 2023)"
INJECTFUSION = ("Jeong, Kwon, Uh: *Training-free Content Injection using h-space in Diffusion Models* "
                "(DiffStyle / InjectFusion, WACV 2024)")
DDIM = "Song, Meng, Ermon: *Denoising Diffusion Implicit Models* (ICLR 2021)"
DIFFAE = "Preechakul et al.: *Diffusion Autoencoders* (CVPR 2022)"
STYLEID = "Chung, Hyun, Heo: *Style Injection in Diffusion* (StyleID, CVPR 2024)"
OTHER_MODEL = ("A direction made with other weights is refused: use one made with this MODEL, or turn on "
               "`allow_other_model` (advanced) for a fine-tune or LoRA of it.")
X_T_GRID = ("An x_T inverted with another number of steps, or with another model, is refused: set `steps` to the "
            "inversion's, and invert with this MODEL.")

HELP: dict[str, dict[str, str]] = {
    "HSpaceDDIMInversion": dict(
        does="Runs DDIM backwards from an image (or latent) to the noise x_T that regenerates it, and records h, the "
             "U-Net bottleneck feature, at every step. x_T and h are what every edit and mix of the pack starts from.",
        example="LoadImage → **H-Space DDIM Inversion** (model, vae `pixel_space`, steps 20) → `x_T` into H-Space "
                "Asyrp Edit; `trajectory` into H-Space Slerp Content Inject's `content`; `reconstruction` shows "
                "what x_T regenerates.",
        paper=f"{DDIM}, eq. 12 run from t to t+1 (the 'seed' convention: ε at the current point, as Asyrp and "
              "InjectFusion invert). Under guidance: negative-prompt / null-text inversion (docs/inversion.md).",
        refusals="Give either `image` with `vae`, or `latent`, not both. A pixel U-Net refuses an image whose sides "
                 "its downsampling cannot take: resize it as the message says. A low reconstruction PSNR means the "
                 "reconstruction drifts: raise `steps` or `refine_iters`."),
    "HSpaceCapture": dict(
        does="Runs the deterministic reverse process from an x_T and records h_t at every step. Use it to collect h "
             "of generated images, e.g. positive and negative examples for a direction.",
        example="EmptyLatentImage or DDIM Inversion's `x_T` → **H-Space Capture** → `trajectory` into H-Space "
                "Direction from Examples (`positive`).",
        paper=f"{DDIM}, eq. 12 (η = 0); h is the middle block's output ({ASYRP}, §3).",
        refusals=X_T_GRID),
    "HSpaceAsyrpEdit": dict(
        does="Regenerates an inverted image with its h shifted along a direction, h̃_t = h_t + strength·Δh_t for "
             "t ≥ t_edit. The asymmetric step keeps the image's identity while the attribute changes.",
        example="DDIM Inversion `x_T` + H-Space Load Direction → **H-Space Asyrp Edit** (strength 1, t_edit 400) → "
                "VAEDecode. Put `-2, -1, 0, 1, 2` in `strength_sweep` and H-Space Label Sweep Grid shows all five.",
        paper=f"{ASYRP}, eq. 4 (asymmetric reverse process: P_t from the edited h, D_t from the original ε) and "
              "§4 (editing interval t ≥ t_edit, quality boosting below t_boost).",
        refusals=f"{X_T_GRID} {OTHER_MODEL} A direction read at another site than the x_T's trajectory is refused: "
                 "make both at one site."),
    "HSpaceSlerpContentInject": dict(
        does="Generates from the style image's x_T while injecting the content image's h by a normalised Slerp. "
             "The result has the content's layout in the style image's look.",
        example="Invert the content and the style image with H-Space DDIM Inversion → **H-Space Slerp Content "
                "Inject** (`style_x_T` = the style's x_T, `content` = the content's trajectory, gamma 0.5, "
                "t_edit 400) → VAEDecode.",
        paper=f"{INJECTFUSION}: h̃ = Slerp(h, h_c·‖h‖/‖h_c‖, γ) for t ≥ t_edit (§3.2), with the asymmetric step of "
              f"{ASYRP} (eq. 4).",
        refusals="The content trajectory must have been inverted or captured with this MODEL, at the same site and "
                 "on the same steps: re-invert it with this node's `steps`. t_edit below a connected Quality "
                 "Boost's t_boost is refused: raise t_edit or lower t_boost."),
    "HSpaceStyleCalibrate": dict(
        does="Settings for InjectFusion's style calibration, for H-Space Slerp Content Inject and the Content "
             "Injection Sampler. Larger ω pulls the result back toward the style image's colours and texture.",
        example="**H-Space Style Calibrate** (omega 0.3) → `calibration` of H-Space Slerp Content Inject.",
        paper=f"{INJECTFUSION}, §3.3: dx = √ᾱ·dP + ω·√(1−ᾱ)·dε, then a plain step with the original network.",
        refusals="ω outside [0, 1] is refused by the widget check; 0 turns calibration off."),
    "HSpaceQualityBoost": dict(
        does="Settings for Asyrp's quality boosting: the steps below t_boost are stochastic (η) and add fine detail. "
             "Its seed replaces the seed of the node it is connected to.",
        example="**H-Space Quality Boost** (t_boost 200, eta 1) → `boost` of H-Space Asyrp Edit or Slerp Content "
                "Inject.",
        paper=f"{ASYRP}, §4.2 (quality boosting), with {DDIM}, eq. 16 (σ_t from η).",
        refusals="A boost that starts above the edit (t_boost > t_edit, or boost_start_percent inside the edit "
                 "window) is refused by the node it is connected to: lower t_boost or raise t_edit."),
    "HSpaceAutoSchedule": dict(
        does="Measures Asyrp's t_edit and t_boost for this model and image with LPIPS. Connect its outputs to the "
             "t_edit and t_boost inputs of the other nodes, or, with window = percent (Flux and SD3 included), "
             "`edit_end_percent` to end_percent and `boost_start_percent` to the Quality Boost's start.",
        example="LoadImage → **H-Space Auto Schedule** (model, vae) → `t_edit` into H-Space Asyrp Edit, `t_boost` "
                "into H-Space Quality Boost.",
        paper=f"{ASYRP}, §4.1–4.2: t_edit where LPIPS(x, P_t) = 0.33 (× the text cosine), t_boost where "
              "LPIPS(x, x_t) = 1.2.",
        refusals="Give either `image` with `vae`, or `latent`; LPIPS is measured on decoded images, so connect the VAE "
                 "(`pixel_space` for pixel U-Nets) with a latent too. LPIPS weights download once: offline, the "
                 "message says where to put them."),
    "HSpaceInterpolate": dict(
        does="Interpolates between two inverted images: Slerp between their x_T and Lerp between their h "
             "trajectories. It returns a batch of frames from A to B.",
        example="Invert two images → **H-Space Interpolate** (`x_T_a`, `x_T_b`, frames 5) → VAEDecode → "
                "SaveImage.",
        paper=f"{DIFFAE}, §4.3 (Slerp of x_T, Lerp of the semantic code), with h as the code.",
        refusals="Both x_T must be of one shape and come from inversions with this MODEL on this node's steps: "
                 "re-invert the one that differs. `clip_x0` is for pixel U-Nets only: turn it off on SD models."),
    "HSpaceDirectionFromExamples": dict(
        does="Makes a direction as the mean h of positive examples minus the mean h of negative examples. "
             "'global' averages it over t into one Δh.",
        example="Capture (or invert) smiling faces → `positive`, neutral faces → `negative` → **H-Space Direction "
                "from Examples** → H-Space Asyrp Edit.",
        paper=f"{ASYRP}, §5.3 (Δh from examples; edits add linearly); {DIFFAE}'s linear attribute directions.",
        refusals="Both trajectories must be made with one model, at one site and on the same steps: capture both "
                 "with the same settings."),
    "HSpaceCombineDirections": dict(
        does="Adds two directions with weights, w_a·Δh_a + w_b·Δh_b. Global and per-timestep directions mix.",
        example="Load Direction (smile) + Load Direction (age) → **H-Space Combine Directions** (1, 0.5) → H-Space "
                "Asyrp Edit.",
        paper=f"{ASYRP}, §5.3: edits in h-space add up linearly.",
        refusals="Directions of different h shapes or sites are refused, and so are implicit (learnt f_t) ones: "
                 "make global or per-timestep directions with one model at one site."),
    "HSpaceSaveDirection": dict(
        does="Saves a direction as safetensors under models/hspace_directions, with its model fingerprint, "
             "timesteps, site and the window it was made with. H-Space Load Direction reads it back.",
        example="H-Space Direction from Examples → **H-Space Save Direction** (filename_prefix `smile`).",
        paper="No paper step: the file format is docs/library.md's (safetensors with metadata).",
        refusals="Nothing particular: the file name gets a counter, as SaveImage's does."),
    "HSpaceLoadDirection": dict(
        does="Loads a direction saved with H-Space Save Direction from models/hspace_directions. It carries the "
             "model, site and timesteps it was made with, and the nodes that use it check them.",
        example="**H-Space Load Direction** → `direction` of H-Space Asyrp Edit or the Asyrp Sampler.",
        paper="No paper step (the pack's file format).",
        refusals="A name that is not in models/hspace_directions is refused: save one there first or pick another "
                 "file. A damaged or foreign file is refused with what is wrong in it (docs/hardening.md)."),
    "HSpaceSaveTrajectory": dict(
        does="Saves an h trajectory (and its x_T) as safetensors under models/hspace_trajectories. Re-use an "
             "inversion without running it again.",
        example="H-Space DDIM Inversion `trajectory` → **H-Space Save Trajectory**.",
        paper="No paper step (the pack's file format).",
        refusals="Nothing particular: the file name gets a counter, as SaveImage's does."),
    "HSpaceLoadTrajectory": dict(
        does="Loads a trajectory saved with H-Space Save Trajectory. It carries its model fingerprint, site and "
             "timesteps.",
        example="**H-Space Load Trajectory** → `content` of H-Space Slerp Content Inject.",
        paper="No paper step (the pack's file format).",
        refusals="A name that is not in models/hspace_trajectories is refused: save one there first. The nodes that "
                 "use the trajectory refuse one made with another model or on other steps."),
    "HSpacePreviewH": dict(
        does="Shows h at one step as an image: its three leading principal components as RGB. It also reports "
             "‖h_t‖ at every step.",
        example="H-Space DDIM Inversion `trajectory` → **H-Space Preview h** (step 10) → PreviewImage.",
        paper="A visualisation, not a paper step (PCA of the channels at each position).",
        refusals="A `step` beyond the trajectory's steps is refused: pick one below its number of steps."),
    "HSpaceLoadPixelUNet": dict(
        does="Loads a pixel-space U-Net (a diffusers UNet2DModel folder, a DDIM-repo checkpoint or a guided-"
             "diffusion checkpoint) as a MODEL. Use VAELoader `pixel_space` as its VAE.",
        example="**H-Space Load Pixel U-Net** (`bundled/hspace-shapes-ddpm`) + VAELoader (`pixel_space`) → H-Space "
                "DDIM Inversion.",
        paper="The checkpoints of Asyrp and InjectFusion (DDPM CelebA-HQ, LSUN) and guided-diffusion; "
              "conversions in docs/adapters.md.",
        refusals="Consistency models, x0 predictors and class-conditional files without a class are refused: the "
                 "message names the JSON settings file to put beside the checkpoint (e.g. {\"class_label\": 207})."),
    "HSpaceTrainAsyrpDirection": dict(
        does="Learns a direction from a text pair (\"face\" → \"smiling face\") with Asyrp's CLIP directional loss "
             "on a frozen model. The result plugs into H-Space Asyrp Edit.",
        example="A few LoadImage → **H-Space Train Asyrp Direction** (source_text `face`, target_text `smiling "
                "face`, epochs 1) → H-Space Asyrp Edit.",
        paper=f"{ASYRP}, §3.3 and eq. 5–6 (directional CLIP loss + reconstruction), the implicit f_t(h_t, t) of §3.4.",
        refusals="CLIP weights that cannot be loaded (offline, unknown name) are refused with the names to use; "
                 "the usual x_T and site checks apply to what it edits."),
    "HSpaceLoadAsyrpDirection": dict(
        does="Loads an official Asyrp checkpoint (.pth from its checkpoint/ folder): the implicit f_t or Δh "
             "tensors. It is read with torch.load(weights_only=True), never as a pickle.",
        example="**H-Space Load Asyrp Direction** (model, asyrp_file) → H-Space Asyrp Edit.",
        paper=f"{ASYRP}, §3.4 (implicit f_t: conv1, temb_proj, norm2, conv2).",
        refusals="A name that is not in models/asyrp is refused: put the .pth there. A file torch.load cannot read "
                 "with weights_only=True is refused, never unpickled."),
    "HSpaceXTToNative": dict(
        does="Turns an inverted x_T into what ComfyUI's own samplers take: NOISE and SIGMAS for "
             "SamplerCustomAdvanced, or a LATENT for KSamplerAdvanced. With `euler` they retrace the pack's DDIM.",
        example="H-Space DDIM Inversion `x_T` → **H-Space x_T to Native Sampler** → SamplerCustomAdvanced "
                "(DisableNoise is not needed: use its `noise`) with KSamplerSelect `euler`.",
        paper=f"{DDIM} eq. 12 is Euler on the probability-flow ODE in σ space (Karras et al. 2022, eq. 4).",
        refusals=f"{X_T_GRID} A `latent_image` of another shape than x_T is refused: use the x_T's own latent."),
    "HSpacePixelConditioning": dict(
        does="An empty CONDITIONING for ComfyUI's native samplers on unconditional pixel U-Nets. Those U-Nets take "
             "no text.",
        example="**H-Space Pixel Conditioning** → `positive` and `negative` of KSampler on a pixel U-Net.",
        paper="No paper step.",
        refusals="Nothing particular."),
    "HSpacePCADirections": dict(
        does="Finds directions without labels: the top k principal components of h over many images. Strength 1 "
             "is one standard deviation of h along the component.",
        example="Invert a batch of images → **H-Space PCA Directions** (k 5) → H-Space Direction Explorer.",
        paper="Haas et al.: *Discovering Interpretable Directions in h-space* (2023), PCA of h_t.",
        refusals="Fewer than two images, images whose h do not vary, or k above what they span is refused: invert or "
                 "capture more images, or lower k."),
    "HSpaceJacobianDirections": dict(
        does="Finds the directions in h the U-Net output is most sensitive to, for one image at one timestep. "
             "They are the top right-singular vectors of the Jacobian, found without building it.",
        example="H-Space DDIM Inversion `x_T` → **H-Space Jacobian Directions** (t 500, k 3) → H-Space Direction "
                "Explorer.",
        paper="Park et al.: *Understanding the Latent Space of Diffusion Models through the Lens of Riemannian "
              "Geometry* (NeurIPS 2023), the pullback metric's singular vectors.",
        refusals=X_T_GRID),
    "HSpaceProbeDirection": dict(
        does="Makes a direction from labelled examples as the normal of a linear classifier of h. Its length is "
             "the mean difference along it.",
        example="Positive and negative trajectories → **H-Space Probe Direction** (logistic) → H-Space Asyrp Edit.",
        paper="BoundaryDiffusion (Zhu et al. 2023: a linear SVM's normal); Diffusion Autoencoders' linear classifier.",
        refusals="Both classes need examples, and they must differ (not the same images); h shapes must match: "
                 "use same-size images. A probe that learns nothing asks for a lower `l2`."),
    "HSpaceOrthogonaliseDirection": dict(
        does="Removes from a direction its projection on other directions (Gram–Schmidt). The result is exactly "
             "orthogonal to them, e.g. a smile without the age that came with it.",
        example="Smile direction + age direction → **H-Space Orthogonalise Direction** → H-Space Asyrp Edit.",
        paper="Haas et al. 2023's removal of correlated attributes.",
        refusals="If nothing is left (the direction lies in the span of the others) the node says so; directions of "
                 "other sites are refused."),
    "HSpaceDirectionExplorer": dict(
        does="Draws one labelled grid of what each direction does to one image: rows are directions, columns "
             "strengths. Use it to find which discovered direction is which attribute.",
        example="H-Space PCA Directions `directions` + an inverted `x_T` → **H-Space Direction Explorer** "
                "(strengths `-2, 0, 2`) → PreviewImage.",
        paper=f"Asyrp edits ({ASYRP}, eq. 4) at each strength.",
        refusals=f"{X_T_GRID} {OTHER_MODEL} On Flux / SD3 `t_edit_sweep` is refused (its t is a U-Net's DDIM "
                 "timestep): leave it empty and set the window in percent."),
    "HSpaceLabelSweepGrid": dict(
        does="Lays a decoded sweep out as one grid image, one labelled column per value. Rows are the input "
             "images.",
        example="H-Space Asyrp Edit (`strength_sweep`) → VAEDecode → **H-Space Label Sweep Grid** (`values` from "
                "the edit's `sweep` output).",
        paper="No paper step.",
        refusals="A batch that is not a multiple of the number of values is refused: connect the sweep's own "
                 "values text."),
    "HSpaceAsyrpSampler": dict(
        does="Asyrp as a SAMPLER for SamplerCustomAdvanced: h̃ = h + strength·Δh inside the edit window, with the "
             "asymmetric step, over any sigmas and guider. ControlNet, LoRA and SDXL keep working.",
        example="**H-Space Asyrp Sampler** (direction, strength 1) → SamplerCustomAdvanced with H-Space x_T to "
                "Native Sampler's NOISE and SIGMAS.",
        paper=f"{ASYRP}, eq. 4 in σ space (docs/native_sampling.md).",
        refusals=f"{OTHER_MODEL} Used outside SamplerCustomAdvanced / SamplerCustom (no guider) it is refused."),
    "HSpaceContentInjectionSampler": dict(
        does="DiffStyle / InjectFusion as a SAMPLER: from the style image's x_T, the content's h is Slerp-injected "
             "inside the edit window. It runs under any guider.",
        example="**H-Space Content Injection Sampler** (content trajectory from the Inversion Sampler) → "
                "SamplerCustomAdvanced on the style's NOISE and SIGMAS.",
        paper=f"{INJECTFUSION}, §3.2–3.3, in σ space.",
        refusals="The content trajectory must be captured on these sigmas: invert the content on the same SIGMAS; "
                 "a content batch that does not match the style batch is refused."),
    "HSpaceInversionSampler": dict(
        does="DDIM inversion as a SAMPLER: run it in SamplerCustomAdvanced on flipped sigmas to get x_T at σ_max. "
             "It records h along the way.",
        example="FlipSigmas → SamplerCustomAdvanced with DisableNoise and **H-Space Inversion Sampler** → H-Space "
                "Inverted x_T.",
        paper=f"{DDIM}, eq. 12 inverted, in σ space.",
        refusals="Unflipped sigmas are refused: put FlipSigmas before SamplerCustomAdvanced."),
    "HSpaceInvertedXT": dict(
        does="Turns the Inversion Sampler's result into the pack's x_T and h trajectory. They carry the sigmas "
             "they were inverted on.",
        example="SamplerCustomAdvanced (Inversion Sampler) `output` + `inversion` → **H-Space Inverted x_T** → "
                "H-Space Asyrp Edit.",
        paper="No paper step (a conversion).",
        refusals="A latent that was not made by the H-Space Inversion Sampler is refused: connect both outputs "
                 "of the same SamplerCustomAdvanced."),
    "HSpaceHShiftPatch": dict(
        does="Patches a MODEL so h becomes h + strength·Δh inside a σ window, for a plain KSampler, shaped like "
             "FreeU. It is the symmetric simplification, not Asyrp's asymmetric process.",
        example="Load Direction → **H-Space Shift** (strength 1) → KSampler.",
        paper="The symmetric h shift of Haas et al. 2023; for Asyrp's eq. 4 use the H-Space Asyrp Sampler.",
        refusals=f"{OTHER_MODEL}"),
    "HSpaceFluxSpaceEdit": dict(
        does="Patches a Flux or SD3.x MODEL so that, inside a percent window, the image tokens' attention output of "
             "the joint blocks becomes ℓ(x, c) + λ·(ℓ(x, c_edit) − its projection on ℓ(x, ∅)); λ_coarse moves the "
             "pooled text embedding the same way. An optional base prompt takes ∅'s place in both projections. "
             "In the window the edit and empty prompts run as extra rows of each model call (memory for 3× the "
             "rows; after the last edited block only the prompt's own rows run).",
        example="CLIPTextEncode ('smiling') and CLIPTextEncode ('') → **H-Space FluxSpace Edit** (λ 1) → KSampler.",
        paper="FluxSpace (Dalva, Venkatesh, Yanardag, CVPR 2025), the fine edit's orthogonal projection; the coarse "
              "edit on the pooled embedding (docs/transformers.md says where the pack's reading may differ).",
        refusals="A U-Net MODEL (FluxSpace is defined on a transformer's joint attention); neither `empty` nor "
                 "`base` connected; a window with start_percent after end_percent."),
    "HSpaceBlockVitality": dict(
        does="Generates once plainly and once per transformer block with that block bypassed (same noise, sigmas "
             "and guidance) and reports how much each bypass changes the result, as a bar plot, a JSON report and "
             "the vital blocks as site names. The change is LPIPS on decoded images with a VAE, else the relative "
             "latent distance.",
        example="EmptySD3LatentImage, BasicScheduler (8 steps) and CLIPTextEncode → **H-Space Block Vitality** "
                "(VAE connected) → Preview Image (plot), Preview Any (report).",
        paper="Stable Flow (Avrahami et al., CVPR 2025), §3.1 vital layers; its Flux.1-dev set is double blocks 0, 1, "
              "17, 18 and single blocks 6, 9, 34, 35, 37.",
        refusals="A U-Net MODEL (it bypasses transformer blocks); cfg ≠ 1 without a negative prompt; sigmas with "
                 "no step."),
    "HSpaceStyleIDFeatures": dict(
        does="DDIM-inverts an image and records its decoder self-attention for StyleID: K and V of a style image "
             "or Q of a content image. It also returns x_T and h along the inversion.",
        example="Style image → **H-Space StyleID Features** (role style) → `style_features` of H-Space StyleID "
                "Inject.",
        paper=f"{STYLEID}, §4.1 (K/V injection).",
        refusals="A U-Net without decoder self-attention at the chosen layers (e.g. the bundled pixel model) is "
                 "refused naming the layers it lacks; a time window with no step of the grid is refused: widen it."),
    "HSpaceStyleIDInject": dict(
        does="Regenerates the content with the style image's K and V in the decoder self-attention, from "
             "AdaIN(x_T content, x_T style). Connect the content's h for the combined StyleID + h-space mode.",
        example="StyleID Features (style) and (content) → **H-Space StyleID Inject** (gamma 0.75, tau 1.5) → "
                "VAEDecode.",
        paper=f"{STYLEID}: query preservation (§4.2), attention temperature (§4.3), initial-latent AdaIN (§4.4).",
        refusals="Query preservation (γ > 0) needs the content's features; content and style x_T must match in size; "
                 "mask and calibration need the content's h (`content_h`) connected."),
}
