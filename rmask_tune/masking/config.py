"""``RandomMaskingConfig``: the peft configuration of Random Masking."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from rmask_tune.errors import RmaskError
from rmask_tune.masking.sampling import SAMPLINGS, STRUCTURES
from rmask_tune.masking.peft_type import RMASK


@dataclass
class RandomMaskingConfig(PeftConfig):
    """Random Masking for peft: train a fixed random subset of the entries of the target weight matrices.

    Give exactly one of ``ratio`` (the fraction of ALL model parameters to train, the paper's "Params")
    or ``density`` (the fraction of each target matrix). The other settings mean what they mean in
    ``rmask_tune.masking.apply_random_masking``, which makes the same masks from the same settings.

    The last four fields are filled in (in this object, which becomes ``peft_config[name]``) when the
    adapter is made, and saved with it. On loading, the masks are rebuilt from the seed and checked against
    ``masks_checksum``; a base model whose parameter names or shapes differ from ``base_fingerprint`` is
    refused, and one of the same architecture whose values differ from ``base_sample`` gets a
    ``DifferentBaseWarning`` (an error with ``strict_base=True``). The saved weights are the values only.
    """

    ratio: Optional[float] = field(default=None, metadata={"help": "Fraction of all model parameters to train."})
    density: Optional[float] = field(default=None, metadata={"help": "Fraction of each target matrix to train."})
    seed: int = field(default=0, metadata={"help": "Seed of the masks (with each module's name)."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "None or 'qv' (attention query and value), a group ('attention', 'mlp', 'all-linear'), or "
            "module name patterns (a name, a name suffix, or a regular expression of the full name)."
        },
    )
    structure: str = field(default="random", metadata={"help": f"Mask layout: one of {', '.join(STRUCTURES)}."})
    sampling: str = field(default="exact", metadata={"help": f"Entry count: one of {', '.join(SAMPLINGS)}."})
    backend: str = field(default="auto", metadata={"help": "Value-gradient kernels: auto, torch, numba or spops."})
    path: str = field(default="auto", metadata={"help": "How the delta is applied: auto, dense, sparse or inplace."})
    init_weights: bool = field(
        default=True, metadata={"help": "True: values start at zero (the adapter changes nothing); False: small "
                                        "random values (for tests that need a non-identity adapter)."}
    )
    strict_base: bool = field(
        default=False, metadata={"help": "Refuse, instead of warning, a base of the same architecture whose "
                                         "weights differ from the one the adapter was made on."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter (a new head)."}
    )
    masked_modules: Optional[list[str]] = field(default=None, metadata={"help": "Filled in: the masked modules."})
    masks_checksum: Optional[str] = field(default=None, metadata={"help": "Filled in: a hash of the mask indices."})
    base_fingerprint: Optional[str] = field(
        default=None, metadata={"help": "Filled in: a hash of the base model's parameter names and shapes."}
    )
    base_sample: Optional[list[float]] = field(
        default=None, metadata={"help": "Filled in: a sample of the base model's values."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = RMASK
        if (self.ratio is None) == (self.density is None):
            raise RmaskError("RandomMaskingConfig needs exactly one of ratio (of all parameters) or density")
        if self.structure not in STRUCTURES:
            raise RmaskError(f"unknown structure '{self.structure}'; choose one of {', '.join(STRUCTURES)}")
        if self.sampling not in SAMPLINGS:
            raise RmaskError(f"unknown sampling '{self.sampling}'; choose one of {', '.join(SAMPLINGS)}")
