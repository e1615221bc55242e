"""The node-execution layer every pack node stands on: the base node (``node``: checks before any U-Net pass),
widget checks (``checks``), the type gate on prompts (``prompt_types``), schema helpers and custom types
(``schema``), x_T origins (``origin``), LATENT / IMAGE conversion (``images``) and the model folders (``files``).
It imports the ComfyUI adapter (``nodes.comfy``) and the core, never a node module."""
from .checks import ValueList, check_number, check_option, check_work, parse_list
from .files import FOLDERS, file_state, list_files, register_folders, resolve, save_path, stored_file_state
from .images import decode, encode, encoded_pixels, latent_of, latent_x, lpips_by_name, psnr
from .node import OTHER_MODEL_HINT, HSpaceNode, node_name
from .origin import ORIGIN_KEY, origin_of, sampling_inputs, with_origin
from .schema import (BOOST_SEED_RULE, BOOST_WINDOWS, CATEGORY, DEFAULT_H_STORAGE, EXPLORER_STRENGTHS, GAMMAS,
                     GRID_ROWS, GRID_VALUES, H_STORAGES, PREFIX, STRENGTH_RANGE, STRENGTHS, T_EDITS, WINDOWS, Boost,
                     Calibration, DirectionSet, DirectionType, Trajectory, advanced, allow_other_model_input, boost_of,
                     boost_window_inputs, check_window, conditioning_inputs, convention_input, edit_schedule,
                     edit_window, gamma_end_of, grid_window, h_storage_inputs, h_storage_of, mixing_inputs,
                     model_input, percent_inputs, sampler_window_inputs, seed_input, seed_of, site_input, steps_input,
                     sweep_text,
                     t_edit_input, values_input, values_of, window_inputs, window_timesteps, x_T_input)
from .runs import sweep
