"""Float models (NeMo-compatible ConvASR and Conformer-CTC) and `.nemo` checkpoint IO."""

from .checkpoint import CheckpointError, load_model, read_nemo, save_model, write_nemo
from .configs import config_for, conformer_ctc_config, jasper_dr_config, quartznet_config
from .conformer import ConformerCTC
from .convasr import ConvASR

__all__ = ["ConformerCTC", "ConvASR", "CheckpointError", "config_for", "conformer_ctc_config", "jasper_dr_config",
           "load_model", "quartznet_config", "read_nemo", "save_model", "write_nemo"]
