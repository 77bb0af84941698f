"""Reusable bounded number types (pydantic ``Annotated``), checked where a value is read.

One definition per kind of number, so results, specs, recipes and policies refuse the same values with the
same one-line message: a proportion outside [0, 1], a negative count, a float that is finite in Python
(float64) but overflows to inf in the float32 tensors it is used in.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, Field

#: the largest finite float32 (``--eps 1e39`` is finite in float64 and inf in a float32 tensor)
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: the smallest positive normal float32 (below it a step or an eps is flushed to 0 or loses precision)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def _finite_in_float32(x: float) -> float:
    if not math.isfinite(x) or abs(x) > FLOAT32_MAX:
        raise ValueError(f"{x!r} is not a finite float32 number (|x| <= {FLOAT32_MAX:.4g})")
    return x


def _positive_in_float32(x: float) -> float:
    _finite_in_float32(x)
    if x < FLOAT32_TINY:
        raise ValueError(f"{x!r} is not a positive float32 number (>= {FLOAT32_TINY:.4g})")
    return x


#: a proportion: a rate, an accuracy, an interval end, a p-value (NaN refused: it compares false)
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
#: a count of images, draws or classes
Count = Annotated[int, Field(ge=0)]
#: finite once cast to float32 (where a value becomes a tensor)
Float32 = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_finite_in_float32)]
#: positive and finite once cast to float32 (eps, step sizes)
PositiveFloat32 = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_positive_in_float32)]
#: in [0, 1] once cast to float32 (an eps or zeta in [0, 1] pixel units)
Float32Fraction = Annotated[float, Field(ge=0.0, le=1.0), AfterValidator(_finite_in_float32)]

__all__ = ["FLOAT32_MAX", "FLOAT32_TINY", "Count", "Float32", "Float32Fraction", "Fraction", "PositiveFloat32"]
