"""The built-in probes; importing this package registers them (``import probes`` does).

In registration order, which is the order of their rows in the probe table:

* ``ablations`` (:mod:`probes.builtin.ablations`): every split's output metrics, clean and
  with the ICL circuit, a random-heads control and the IWL path ablated;
* ``head_scores`` (:mod:`probes.builtin.head_scores`): per-head scores on the ICL split;
* ``circuits`` (:mod:`probes.builtin.circuits`): the discovered ICL / IWL circuits (report
  only; cached by :mod:`probes.circuits_over_training`);
* opt-in (run only when named): ``llc_components``, ``llc`` and ``stages``
  (:mod:`probes.builtin.llc`): the local learning coefficient, essential dynamics and
  stage boundaries.

A new built-in probe is one module here plus its name in ``BUILTIN``.
"""

import importlib

#: The built-in probe modules, imported (so registered) in this order.
BUILTIN = ("ablations", "head_scores", "circuits", "llc")

for _name in BUILTIN:
    importlib.import_module(f"{__name__}.{_name}")
