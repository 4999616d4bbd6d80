"""The ``icl-circuits`` argument parser: every subcommand, its flags and help."""

from __future__ import annotations

import argparse

from icl_circuits.cli.commands import (
    DEFAULT_ROOT,
    cmd_analyze,
    cmd_circuits,
    cmd_presets,
    cmd_refine,
    cmd_reproduce,
    cmd_show,
    cmd_sweep,
    cmd_train,
)
from icl_circuits.errors import ICLError

DESCRIPTION = "The ``icl-circuits`` command line."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        raise ICLError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="icl-circuits", description=DESCRIPTION, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "presets", allow_abbrev=False, help="list presets with one-line descriptions, or print one's full config"
    )
    p.add_argument("name", nargs="?", help="a preset: print its full config as JSON (usable with train --config)")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser(
        "train", allow_abbrev=False, help="train a preset (or --config) into a run folder; resumes if it exists"
    )
    p.add_argument("preset", nargs="?", help="preset name (icl-circuits presets)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.n_classes=32 train.steps=2000")
    p.add_argument("--config", help="a config.json to start from instead of a preset")
    p.add_argument("--out", help=f"run folder (default {DEFAULT_ROOT}/NAME)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--analyze", action="store_true", help="run `analyze` on the run afterwards")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config, checkpoint steps and an estimated time; write nothing. "
        "Shrinking train.steps keeps n_checkpoints (at most steps + 1 are distinct) and eval_size "
        "(evaluation cost per checkpoint): lower them too for a quick run",
    )
    p.add_argument("--seeds", help="seed replicates (0,1,2 or range(3)): one run folder each, OUT/seed=S")
    p.add_argument(
        "--vectorise",
        choices=["auto", "yes", "no"],
        default="auto",
        help="--seeds in one vmapped model (auto: if it pays)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "reproduce", allow_abbrev=False, help="reproduce a seed paper's experiment (figures, tables, claims)"
    )
    p.add_argument("name", nargs="?", help="which paper (--list shows them)")
    p.add_argument("--list", action="store_true", help="list the reproductions")
    p.add_argument(
        "--scale", default="cpu", choices=["smoke", "cpu", "full"], help="size (default cpu: <= 30 min on 2 cores)"
    )
    p.add_argument("--full", action="store_true", help="the paper's scale (same as --scale full; for a GPU)")
    p.add_argument("--out", help="output folder (default reproductions/NAME-SCALE); rerunning resumes it")
    p.add_argument("--workers", type=int, default=None, help="parallel training processes (default: one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs, validate every config, estimate the wall time (timed here) and disk; train nothing",
    )
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser(
        "refine", allow_abbrev=False, help="add checkpoints between two steps of a finished run by exact replay"
    )
    p.add_argument("run")
    p.add_argument("--between", nargs=2, type=int, required=True, metavar=("A", "B"), help="steps A < B of the run")
    p.add_argument("--checkpoints", type=int, default=10, help="checkpoints to add in (A, B] (default 10)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("show", allow_abbrev=False, help="config, checkpoints and last metrics of a run")
    p.add_argument("run")
    p.add_argument("--config", action="store_true", help="also print the full config")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "analyze", allow_abbrev=False, help="probe every checkpoint: table, figures and summary in RUN/analysis"
    )
    p.add_argument("run")
    p.add_argument("--eval-size", type=int, default=512, help="sequences per evaluation split")
    p.add_argument("--ablation", default="mean", choices=["mean", "zero", "resample"])
    p.add_argument("--induction-heads", help="the ICL circuit's induction heads, e.g. 1.0,1.3 (default: found)")
    p.add_argument("--prev-token-heads", help="its previous-token heads, e.g. 0.1 (with --induction-heads)")
    p.add_argument(
        "--out", help="folder for the analysis cache and report (default RUN/analysis; e.g. for a read-only run)"
    )
    p.add_argument(
        "--with",
        dest="with_probes",
        metavar="PROBES",
        help="also run these opt-in probes, comma-separated: llc, llc_components, stages (docs/development.md)",
    )
    p.add_argument(
        "--llm-steps", help="a fine-tuning run: checkpoints at which its top heads are ablated (default: first,last)"
    )
    p.add_argument(
        "--llm-heads", type=int, default=3, help="a fine-tuning run: top induction heads ablated (default 3)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "circuits",
        allow_abbrev=False,
        help="discover one split's circuit at chosen checkpoints (method, target, counterfactual): table, figure, edges",
    )
    p.add_argument("run")
    p.add_argument("--split", help="the split whose logit difference the circuit explains (default: the ICL split)")
    p.add_argument("--method", default="eap-ig", help="edge scores: exact, eap, eap-ig (default) or atp*")
    p.add_argument("--steps", default="last", help="checkpoints: last (default), all, or steps like 100,3000")
    p.add_argument(
        "--target", type=float, default=0.9, help="faithfulness the circuit must reach, in (0, 1] (default 0.9)"
    )
    p.add_argument(
        "--counterfactual",
        default="mean",
        help="what a patched edge carries: mean (default, over the split's sequences), zero, or a split's name",
    )
    p.add_argument("--n", type=int, default=64, help="sequences of the split (default 64)")
    p.add_argument("--ig-steps", type=int, default=5, help="EAP-IG integration steps (default 5)")
    p.add_argument(
        "--min-effect",
        type=float,
        default=1.0,
        help="least logit difference for a circuit to be looked for (default 1)",
    )
    p.add_argument("--out", help="folder for the tables and figure (default RUN/analysis/circuits-SPLIT-METHOD-...)")
    p.set_defaults(func=cmd_circuits)

    p = sub.add_parser(
        "sweep",
        allow_abbrev=False,
        help="train a grid of runs (spec file or KEY=VALUES axes) locally or on Ray; rerun to resume",
    )
    p.add_argument("spec", nargs="?", help="a TOML/JSON sweep spec, or an existing sweep folder to resume")
    p.add_argument(
        "axes",
        nargs="*",
        help="with --base: grid axes, e.g. 'data.n_classes=[32,1024]' 'seed=range(3)' 'data.n_classes=[2**i for i in range(5,8)]'",
    )
    p.add_argument("--base", help="preset every point starts from (instead of a SPEC file)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="fixed override for every point (repeatable)"
    )
    p.add_argument("--out", help="sweep folder (default sweeps/SPEC-NAME or sweeps/BASE)")
    p.add_argument("--backend", default="local", choices=["local", "ray"], help="where runs execute (default local)")
    p.add_argument("--workers", type=int, help="local: worker processes (default: one per core); ray: local Ray's CPUs")
    p.add_argument("--address", help="ray: an existing cluster's head, e.g. 10.0.0.1:6379 (default: start Ray here)")
    p.add_argument("--max-retries", type=int, default=2, help="retries of a run whose worker died (default 2)")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="ray: GPUs each run reserves (e.g. 0.25)")
    p.add_argument("--probes", action="store_true", help="also run the probe suite on each run; adds rows to results")
    p.add_argument("--probe-eval-size", type=int, default=512, help="sequences per split for --probes (default 512)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--vectorise", choices=["auto", "yes", "no"], default="auto", help="runs sharing a model in one vmapped job"
    )
    p.set_defaults(func=cmd_sweep)
    return parser
