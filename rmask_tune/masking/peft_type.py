"""The ``PeftType`` member of Random Masking.

peft's ``register_peft_method`` only accepts names that ``PeftType`` already has, and peft has no
public way to add one, so the member is added here, the way ``enum`` itself makes members.
"""

from __future__ import annotations

from peft.utils import PeftType

NAME = "RMASK"


def _peft_type(name: str) -> PeftType:
    """``PeftType[name]``, added to the enum when peft does not have it."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = member._value_ = name
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_names_.append(name)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    type.__setattr__(PeftType, name, member)
    return member


RMASK = _peft_type(NAME)
