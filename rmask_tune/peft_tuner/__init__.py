"""Random Masking as a peft method: ``get_peft_model(model, RandomMaskingConfig(ratio=1e-3, seed=0))``.

Importing this package registers the method with peft (``register_peft_method``), which
``PeftModel.from_pretrained`` needs to load a saved Random Masking adapter.
"""

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import register_peft_method

from rmask_tune.peft_tuner.config import RandomMaskingConfig
from rmask_tune.peft_tuner.layer import RandomMaskingLayer
from rmask_tune.peft_tuner.model import RandomMaskingModel
from rmask_tune.peft_tuner.peft_type import NAME, RMASK

__all__ = ["RandomMaskingConfig", "RandomMaskingLayer", "RandomMaskingModel"]

if RMASK not in PEFT_TYPE_TO_TUNER_MAPPING:
    register_peft_method(name=NAME.lower(), config_cls=RandomMaskingConfig, model_cls=RandomMaskingModel)
