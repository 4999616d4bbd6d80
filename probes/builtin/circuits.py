"""Probe ``circuits``: the ICL and IWL circuits discovered at every checkpoint (report only).

It has no per-checkpoint rows in the probe table: :func:`probes.circuit_report.write_circuit_report`
computes and caches its own tables (:mod:`probes.circuits_over_training`, keyed by its
``VERSION``, which is this probe's version) and writes them, with figures, into the report.
"""

from __future__ import annotations

from probes.circuits_over_training import VERSION
from probes.registry import Probe, ReportContext, register


def report(ctx: ReportContext) -> list[str]:
    """:func:`probes.circuit_report.write_circuit_report` on the analysed checkpoints.

    The edge graph splits exemplar and label embeddings, which packed tokens hold together:
    on a packed run the section is one line saying so.
    """
    from probes.circuit_report import write_circuit_report

    if ctx.cfg.data.layout == "packed":
        return ["discovered circuits: skipped (the edge graph needs the interleaved layout; data.layout=packed)"]
    return write_circuit_report(ctx.run, ctx.cache, ctx.out, ctx.transitions, steps=ctx.steps, progress=ctx.progress)


PROBE = register(
    Probe(
        "circuits",
        VERSION,
        report=report,
        report_rank=30,
        description="ICL and IWL circuits discovered by edge patching at every checkpoint (docs/circuits.md)",
    )
)
