"""Float models (NeMo-compatible ConvASR) and `.nemo` checkpoint IO."""

from .checkpoint import CheckpointError, load_model, read_nemo, save_model, write_nemo
from .configs import config_for, jasper_dr_config, quartznet_config
from .convasr import ConvASR

__all__ = ["ConvASR", "CheckpointError", "config_for", "jasper_dr_config", "load_model", "quartznet_config",
           "read_nemo", "save_model", "write_nemo"]
