"""The competition tests on Nguyen & Reddy 2024's one-layer model, where ICL is transient.

Nguyen & Reddy call their model's generalising and memorising sub-circuits "largely
independent": one attention head that copies the matching context item's label (``sa_q``), and
the MLP readout's response to the query's own token (``x_q``), summed into the readout
(``MLP(x_q + sa_q)``; :mod:`icl_circuits.papers.nguyen_reddy2024.mechanism`). The runs are the
``nguyen-reddy2024`` reproduction's ``transience-strong`` sweep (N 8, K 1,024, weight decay
3e-2 on the attention: LayerNorm and QKV; 6,000 steps, seeds 0 and 1), the one where ICL fades
within the cpu run (at the paper's decay 3e-3 and K 2,048 it does not fade in 6,000 steps).

From each run's ICL peak, three forks with interventions during training, trained to the run's
end:

* ``block``: the memorising route cut: ``x_q``'s direct path into the readout (``path`` of
  ``embed``), so the readout reads only the head's output at the query (the head still reads
  ``x_q`` as its query, and attends to the query itself);
* ``freeze``: the attention (ICL) path frozen: the head's W_Q, W_K, W_V (12,675 weights at
  the cpu scale), so weight decay no longer shrinks it;
* ``control``: as many weights of the readout frozen: the input weights of a random block of
  ``ceil(12,675 / 65) = 195`` of its first layer's 512 hidden units (``head.mlp.0.weight[a:a+195]``,
  ``a`` drawn from the run's seed). The readout reads only ``x_q`` and ``sa_q``, so there is no
  third route of equal size to cut: this one random component of equal size is the control of
  both tests (``block-control`` and ``freeze-control`` in the tables are this fork).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pandas as pd

from icl_circuits.config import RunConfig
from icl_circuits.intervention_config import EMBED, InterventionConfig
from icl_circuits.papers.nguyen_reddy2024.reproduce import settings as nr_settings
from icl_circuits.papers.nguyen_reddy2024.reproduce import spec as nr_spec
from icl_circuits.papers.singh2023.competition import fork_summary, peak_step
from icl_circuits.papers.singh2023.forks import Fork
from icl_circuits.sweeps.spec import SweepSpec

#: The sweep's name, as the ``nguyen-reddy2024`` reproduction names it.
SWEEP = "transience-strong"
#: The readout layer whose hidden units make the control.
CONTROL_PARAM = "head.mlp.0.weight"
HEAD = "L0H0"


def sweep_spec(scale: str) -> SweepSpec:
    """The ``transience-strong`` sweep of ``reproduce nguyen-reddy2024`` at ``scale``."""
    s = nr_settings(scale)
    over = [f"train.weight_decay={s['strong_wd']}", s["no_stop"]]
    return nr_spec(s, s["trans_N"], [s["strong_K"]], s["trans_seeds"], over, s["trans_steps"])


def describe(scale: str) -> str:
    """The runs' setting in one phrase."""
    s = nr_settings(scale)
    return f"Nguyen & Reddy's model (N {s['trans_N']}, K {s['strong_K']:,}, decay {s['strong_wd']:g} on the attention)"


def head_weights(cfg: RunConfig) -> int:
    """Trainable weights of the single head: its W_Q, W_K, W_V (and biases where trained)."""
    d, m = cfg.model.d_model, cfg.model
    return 3 * d * d + (3 * d if m.attn_bias else 0)


def fork_configs(cfg: RunConfig, peak: int, seed: int = 0) -> dict[str, RunConfig]:
    """``block``, ``freeze`` and ``control`` from ``peak`` (the control left out when the readout's
    first layer has fewer hidden units than it needs)."""

    def with_iv(iv: InterventionConfig) -> RunConfig:
        return cfg.replace(train=cfg.train.replace(interventions=(iv,)))

    out = {
        "block": with_iv(InterventionConfig(kind="path", targets=(EMBED,), start=peak)),
        "freeze": with_iv(InterventionConfig(kind="freeze", targets=(HEAD,), start=peak)),
    }
    units = cfg.model.readout_hidden[0]
    n = math.ceil(head_weights(cfg) / cfg.model.d_model)
    if n <= units:
        a = random.Random(seed).randrange(units - n + 1)
        target = f"{CONTROL_PARAM}[{a}:{a + n}]"
        out["control"] = with_iv(InterventionConfig(kind="freeze", targets=(target,), start=peak))
    return out


def forks(base: Path, out: Path) -> tuple[int, list[Fork]]:
    """The run's ICL peak and its forks (folders ``out/NAME``), trained to the run's end."""
    from icl_circuits.runs.read import load_config

    cfg = load_config(base)
    peak = peak_step(base)
    return peak, [Fork(name, base, peak, c, out / name) for name, c in fork_configs(cfg, peak, cfg.seed).items()]


def rows(base: Path, peak: int, trained: list[Fork]) -> list[dict]:
    """One row per test (``plain``, ``block``, ``freeze``, and the control as ``block-control``
    and ``freeze-control``): ICL and IWL at the peak and at the end."""
    end = trained[0].last if trained else None
    out = [{"test": "plain", "targets": "", **fork_summary(base, peak, end)}]
    for fork in trained:
        targets = " ".join(t for iv in fork.cfg.train.interventions for t in iv.targets)
        summary = fork_summary(fork.folder, peak, end)
        names = ["block-control", "freeze-control"] if fork.name == "control" else [fork.name]
        out += [{"test": name, "targets": targets, **summary} for name in names]
    return [{"peak": peak, **r} for r in out]


def transient(curves: pd.DataFrame, level: float, drop: float) -> pd.DataFrame:
    """Per seed: the plain run's ICL peak and its value at the end; ``transient`` when the peak
    reaches ``level`` and the end is more than ``drop`` below it."""
    out = []
    for seed, g in curves.groupby("seed"):
        g = g[g["step"] > 0]
        i = g["ICL"].idxmax()
        peak, last = float(g.loc[i, "ICL"]), float(g["ICL"].iloc[-1])
        out.append(
            {
                "seed": int(seed),
                "peak_step": int(g.loc[i, "step"]),
                "peak": peak,
                "end": int(g["step"].iloc[-1]),
                "ICL_end": last,
                "IWL_end": float(g["IWL"].iloc[-1]),
                "transient": peak >= level and peak - last > drop,
            }
        )
    return pd.DataFrame(out)
