"""The node-execution layer every pack node stands on: the base node (``node``: checks before any U-Net pass),
widget checks (``checks``), the type gate on prompts (``prompt_types``), widget factories and custom types
(``schema``), what the widgets mean for a run (``resolution``: windows, the boost, seeds), x_T origins
(``origin``), LATENT / IMAGE conversion (``images``), sweep grid pictures (``grids``) and the model folders
(``files``).  It imports the ComfyUI adapter (``nodes.comfy``) and the core, never a node module."""
from .checks import ValueList, check_number, check_option, check_work, parse_list
from .files import FOLDERS, file_state, list_files, register_folders, resolve, save_path, stored_file_state
from .images import decode, encode, encoded_pixels, latent_of, latent_x, lpips_by_name, psnr
from .node import OTHER_MODEL_HINT, HSpaceNode, node_name
from .origin import ORIGIN_KEY, origin_of, sampling_inputs, with_origin
from .resolution import (boost_of, check_window, edit_schedule, edit_window, gamma_end_of, grid_window, h_storage_of,
                         seed_of, sweep_text, t_widget_timestep, values_of, window_timesteps)
from .schema import (BOOST_SEED_RULE, BOOST_WINDOWS, CATEGORY, DEFAULT_H_STORAGE, EXPLORER_STRENGTHS, GAMMAS,
                     GRID_ROWS, GRID_VALUES, H_STORAGES, PREFIX, STRENGTH_RANGE, STRENGTHS, T_EDITS, WINDOWS, Boost,
                     Calibration, DirectionSet, DirectionType, Trajectory, advanced, allow_other_model_input,
                     boost_window_inputs, conditioning_inputs, convention_input, h_storage_inputs, latent_nudging_input,
                     mixing_inputs, model_input, percent_inputs, sampler_window_inputs, seed_input, site_input,
                     steps_input, t_edit_input, values_input, window_inputs, x_T_input)
from .runs import sweep
