"""Universal adversarial perturbations: ``build_uap`` and the methods it can run.

One file per method (``fgsm``, ``fgsm_reference``, ``perphoto``, ``sgd``, ``deepfool``), each registered in
:mod:`~robaudit.attacks.uap.registry`; the loop state they share in :mod:`~robaudit.attacks.uap.state`;
one or many processes behind :mod:`~robaudit.attacks.uap.group`; builds fed chunk by chunk
(:class:`Builder`) race in :mod:`~robaudit.attacks.uap.race`; selection and the stop rule in ``select``.
"""

from robaudit.attacks.uap.build import Builder, Source, build_uap, drive, new_run
from robaudit.attacks.uap.registry import method_names, register
from robaudit.attacks.uap.select import Plateau, Selection, StopRule
from robaudit.attacks.uap.state import Stopped, UAPOutcome, UAPSettings, UAPState

__all__ = ["Builder", "Plateau", "Selection", "Source", "StopRule", "Stopped", "UAPOutcome", "UAPSettings", "UAPState",
           "build_uap", "drive", "method_names", "new_run", "register"]
