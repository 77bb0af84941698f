"""Universal adversarial perturbations: ``build_uap`` and the methods it can run.

One file per method (``fgsm``, ``fgsm_reference``, ``sgd``, ``deepfool``), each registered in
:mod:`~robaudit.attacks.uap.registry`; the loop state they share in :mod:`~robaudit.attacks.uap.state`;
one or many processes behind :mod:`~robaudit.attacks.uap.group`.
"""

from robaudit.attacks.uap.build import Source, build_uap, drive
from robaudit.attacks.uap.registry import method_names, register
from robaudit.attacks.uap.select import Plateau, Selection
from robaudit.attacks.uap.state import Stopped, UAPOutcome, UAPSettings, UAPState

__all__ = ["Plateau", "Selection", "Source", "Stopped", "UAPOutcome", "UAPSettings", "UAPState", "build_uap", "drive",
           "method_names", "register"]
