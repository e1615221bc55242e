"""ComfyUI nodes: thin shells that translate ComfyUI types to one ``hspace_core`` call each."""
from .clip_training import LoadAsyrpDirection, TrainAsyrpDirection
from .discovery import DirectionExplorer, JacobianDirections, OrthogonaliseDirection, PCADirections, ProbeDirection
from .editing import AsyrpEdit, CombineDirections, DirectionFromExamples
from .files import LoadDirection, LoadTrajectory, SaveDirection, SaveTrajectory
from .fluxspace import FluxSpaceEdit
from .injection import Interpolate, QualityBoost, SlerpContentInject, StyleCalibrate
from .inversion import Capture, DDIMInversion
from .loaders import LoadPixelUNet
from .native import PixelConditioning, XTToNative
from .samplers import AsyrpSampler, ContentInjectionSampler, HShiftPatch, InvertedXT, InversionSampler
from .schedule import AutoSchedule
from .sweep_grid import LabelSweepGrid
from .styleid import StyleIDFeatures, StyleIDInject
from .layer import register_folders
from .layer.prompt_types import install as install_type_gate
from .trajectory_io import PreviewH
from .vitality import BlockVitality

register_folders()

NODES = (DDIMInversion, Capture, AsyrpEdit, SlerpContentInject, StyleCalibrate, QualityBoost, AutoSchedule,
         Interpolate, DirectionFromExamples, CombineDirections, SaveDirection, LoadDirection, SaveTrajectory,
         LoadTrajectory, PreviewH, LoadPixelUNet, TrainAsyrpDirection, LoadAsyrpDirection, XTToNative, PixelConditioning,
         PCADirections, JacobianDirections, ProbeDirection, OrthogonaliseDirection, DirectionExplorer,
         LabelSweepGrid, AsyrpSampler, ContentInjectionSampler, InversionSampler, InvertedXT, HShiftPatch,
         StyleIDFeatures, StyleIDInject, FluxSpaceEdit, BlockVitality)
install_type_gate(NODES)
