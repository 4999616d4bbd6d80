"""What each ``icl-circuits`` subcommand does: one ``cmd_NAME(args)`` per command.

Every error caused by the user (config, arguments, files) is raised as a one-line ICLError.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from icl_circuits.errors import ICLError

DEFAULT_ROOT = Path("checkpoints")


def cmd_presets(args: argparse.Namespace) -> None:
    from icl_circuits.presets import describe, get_preset

    if args.name:
        print(get_preset(args.name).to_json())  # a config file for `train --config`
        return
    for name, line in describe().items():
        print(f"{name:22s} {line}")


def _load_config(args: argparse.Namespace):
    from icl_circuits.config import RunConfig, apply_overrides
    from icl_circuits.presets import get_preset
    from icl_circuits.runs.store import MAX_JSON_BYTES, read_regular

    if args.config:
        path = Path(args.config)
        if path.is_dir():
            raise ICLError(f"{path}: is a folder; --config takes a config.json file (e.g. {path / 'config.json'})")
        try:
            raw = json.loads(read_regular(path, MAX_JSON_BYTES))
        except FileNotFoundError:
            raise ICLError(f"{path}: no such config file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ICLError(f"{path}: not valid JSON ({err})") from None
        except RecursionError:
            raise ICLError(f"{path}: not a config: nested too deeply to parse") from None
        raw.pop("format_version", None) if isinstance(raw, dict) else None
        cfg = RunConfig.from_dict(raw)
    else:
        cfg = get_preset(args.preset)
    return apply_overrides(cfg, args.overrides)


def cmd_train(args: argparse.Namespace) -> None:
    from icl_circuits.runs.read import read_metrics
    from icl_circuits.training import train

    if args.preset and "=" in args.preset:
        args.overrides.insert(0, args.preset)
        args.preset = None
    if not args.preset and not args.config:
        raise ICLError("train: give a preset name (see `icl-circuits presets`) or --config FILE")
    if args.preset and args.config:
        raise ICLError(f"train: give a preset ({args.preset}) or --config FILE, not both")
    cfg = _load_config(args)
    out = Path(args.out) if args.out else DEFAULT_ROOT / cfg.name
    if args.seeds is not None:
        if args.analyze:
            raise ICLError("train: --analyze takes one run; analyse each seed's folder with `icl-circuits analyze`")
        from icl_circuits.sweeps.spec import parse_seeds

        return _train_seeds(cfg, parse_seeds(args.seeds), out, args)
    if args.dry_run:
        from icl_circuits.training.plan import describe_plan

        print(describe_plan(cfg, out))
        return
    run = train(cfg, out, progress=not args.no_progress)
    metrics = read_metrics(run)
    print(f"run folder: {run}")
    print(f"metrics:    {run / 'metrics.jsonl'} ({metrics.step.nunique()} checkpoints)")
    _print_last(metrics)
    if args.analyze:
        args.run = run
        args.eval_size, args.ablation, args.induction_heads, args.prev_token_heads = 512, "mean", None, None
        cmd_analyze(args)


def _train_seeds(cfg, seeds: list[int], out: Path, args: argparse.Namespace) -> None:
    """``train --seeds``: one run folder per seed under ``out``, vectorised where it pays."""
    from icl_circuits.runs.layout import seed_dirname
    from icl_circuits.runs.read import read_metrics
    from icl_circuits.training import train
    from icl_circuits.training.replicates import vectorise_pays

    runs = [out / seed_dirname(s) for s in seeds]
    vectorise = {"auto": None, "yes": True, "no": False}[args.vectorise]
    chosen = vectorise_pays(cfg, len(seeds)) if vectorise is None else vectorise
    how = "vectorised (one process)" if chosen and len(seeds) > 1 else "one after another"
    if args.dry_run:
        print(f"dry run: {len(seeds)} seeds {seeds}, {how}, into {', '.join(map(str, runs))}")
        return
    train(cfg, runs, progress=not args.no_progress, seeds=seeds, vectorise=chosen)
    print(f"seeds:      {len(seeds)} ({how})")
    for run in runs:
        print(f"run folder: {run}")
        _print_last(read_metrics(run))


def _print_last(metrics) -> None:
    if metrics.empty:
        return
    last = metrics[metrics.step == metrics.step.max()]
    table = last.pivot_table(index="split", columns="metric", values="value")
    print(f"step {int(metrics.step.max())}:")
    print(table.round(3).to_string())


def cmd_show(args: argparse.Namespace) -> None:
    from icl_circuits.llm.report import is_llm_run, load_finetune_config, show_lines
    from icl_circuits.runs.read import load_config, read_metrics
    from icl_circuits.runs.store import list_checkpoints, stopped_early

    run = Path(args.run)
    if is_llm_run(run):
        print("\n".join(show_lines(run)))
        if args.config:
            print(json.dumps(load_finetune_config(run).to_dict(), indent=1))
        _print_last(read_metrics(run))
        return
    cfg = load_config(run)
    steps = list_checkpoints(run)
    print(f"run folder:  {run}")
    print(
        f"config:      {cfg.name} (seed {cfg.seed}, data {cfg.data.family}, {cfg.model.n_layers} layers x {cfg.model.n_heads} heads)"
    )
    span = f"steps {steps[0]}..{steps[-1]}" if steps else "none yet"
    print(f"checkpoints: {len(steps)} ({span}) of {cfg.train.steps} steps")
    stop = stopped_early(run) if steps else None
    if stop is not None:
        print(
            f"stopped:     early at step {stop['step']} ({stop['split']} {stop['metric']} "
            f"{stop['value']:.3f} > {stop['above']}: train.stop_above)"
        )
    if steps:
        from icl_circuits.errors import CheckpointError
        from icl_circuits.runs.store import verify_checkpoint

        try:
            verify_checkpoint(run, steps[-1])
        except CheckpointError as err:
            print(f"CORRUPT:     last checkpoint (step {steps[-1]}): {err}")
    if args.config:
        print(cfg.to_json())
    _print_last(read_metrics(run))


def cmd_analyze(args: argparse.Namespace) -> None:
    from icl_circuits.llm.report import is_llm_run
    from icl_circuits.runs.read import load_config
    from probes.circuits import FoundCircuit
    from probes.report import SUMMARY, write_report

    if is_llm_run(args.run):
        return _analyze_llm(args)
    cfg = load_config(Path(args.run))
    given = getattr(args, "out", None) if args.command == "analyze" else None
    check_writable(
        Path(given) if given else Path(args.run) / "analysis",
        "the analysis",
        "analyse into a folder you can write with --out FOLDER",
    )
    circuit = None
    if args.prev_token_heads and not args.induction_heads:
        raise ICLError("--prev-token-heads: give --induction-heads too (the circuit is both; alone it is ignored)")
    if args.induction_heads:
        shape = (cfg.model.n_layers, cfg.model.n_heads)
        circuit = FoundCircuit(
            _parse_heads(args.prev_token_heads or "", shape), _parse_heads(args.induction_heads, shape)
        )
    if args.eval_size < 1:
        raise ICLError(f"--eval-size: expected a positive number of sequences, got {args.eval_size}")
    probes = None
    extra = [n for n in (getattr(args, "with_probes", None) or "").split(",") if n]
    if extra:
        from probes import registry

        probes = [p.name for p in registry.select(None)] + [registry.get(n).name for n in extra]
    out = write_report(
        args.run,
        progress=not args.no_progress,
        out=given,
        circuit=circuit,
        eval_size=args.eval_size,
        ablation=args.ablation,
        probes=probes,
    )
    print(f"analysis:   {out}")
    print((out / SUMMARY).read_text(), end="")


def cmd_refine(args: argparse.Namespace) -> None:
    from icl_circuits.training.refine import refine

    added = refine(args.run, args.between[0], args.between[1], args.checkpoints, progress=not args.no_progress)
    print(f"refined:    {args.run}: {len(added)} checkpoint(s) added at steps {', '.join(map(str, added))}")


def _analyze_llm(args: argparse.Namespace) -> None:
    """``analyze`` of a language-model fine-tuning run (icl_circuits.llm.report)."""
    from icl_circuits.llm.report import SUMMARY, write_llm_report

    if args.induction_heads or args.prev_token_heads:
        raise ICLError("--induction-heads: a fine-tuning run ablates its own top induction heads (see --llm-heads)")
    given = getattr(args, "out", None) if args.command == "analyze" else None
    check_writable(Path(given) if given else Path(args.run) / "analysis", "the analysis", "use --out FOLDER")
    steps = None
    if getattr(args, "llm_steps", None):
        items = [s.strip() for s in args.llm_steps.split(",") if s.strip()]
        if not items or len(items) > 64 or not all(s.isdigit() and len(s) <= 12 for s in items):
            raise ICLError(f"--llm-steps: expected up to 64 step numbers like 0,150, got {args.llm_steps!r}")
        steps = [int(s) for s in items]
    out = write_llm_report(args.run, out=given, steps=steps, k=getattr(args, "llm_heads", 3))
    print(f"analysis:   {out}")
    print((out / SUMMARY).read_text(), end="")


def cmd_circuits(args: argparse.Namespace) -> None:
    from probes.circuit_study import MAX_STEPS, find_circuits, study_lines

    steps: list[int] | str = args.steps
    if args.steps not in ("last", "all"):
        items = [s.strip() for s in args.steps.split(",") if s.strip()]
        if not items or len(items) > MAX_STEPS or not all(s.isdigit() and len(s) <= 12 for s in items):
            raise ICLError(
                f"--steps: expected last, all or step numbers like 100,3000 (at most {MAX_STEPS}), got {args.steps!r}"
            )
        steps = [int(s) for s in items]
    study = find_circuits(
        args.run,
        split=args.split,
        method=args.method,
        steps=steps,
        target=args.target,
        counterfactual=args.counterfactual,
        n=args.n,
        ig_steps=args.ig_steps,
        out=args.out,
        min_effect=args.min_effect,
    )
    print(f"circuits:   {study.out} ({', '.join(f.name for f in study.files)})")
    print("\n".join(study_lines(study)))


def cmd_sweep(args: argparse.Namespace) -> None:
    from icl_circuits.sweeps.backends import make_backend
    from icl_circuits.sweeps.spec import SweepSpec, load_spec, parse_axis_arg
    from icl_circuits.sweeps.sweep import INDEX, RESULTS, SPEC, check_ok, load_sweep_spec, run_sweep

    axes = list(args.axes)
    if args.spec and "=" in args.spec and not Path(args.spec).exists():
        axes.insert(0, args.spec)
        args.spec = None
    if args.spec:
        if axes or args.base or args.set:
            raise ICLError("sweep: give either a SPEC file (or sweep folder) or --base with KEY=VALUES axes, not both")
        path = Path(args.spec)
        if path.is_dir():
            spec, out = load_sweep_spec(path), path
            if args.out and Path(args.out).resolve() != path.resolve():
                raise ICLError(f"sweep: {path} is a sweep folder; it is resumed in place (drop --out)")
        else:
            spec, out = load_spec(path), Path(args.out) if args.out else Path("sweeps") / path.stem
    elif args.base:
        if not axes:
            raise ICLError("sweep: give at least one axis, e.g. 'data.n_classes=[32,1024]' or 'seed=range(3)'")
        grid: dict[str, list] = {}
        for item in axes:
            key, values = parse_axis_arg(item)
            if key in grid:
                raise ICLError(f"{key}: axis given twice")
            grid[key] = values
        spec = SweepSpec(base=args.base, overrides=tuple(args.set), grid=grid)
        out = Path(args.out) if args.out else Path("sweeps") / args.base
    else:
        raise ICLError("sweep: give a SPEC file (TOML or JSON), a sweep folder, or --base PRESET with KEY=VALUES axes")
    backend = make_backend(args.backend, args.workers, args.address, args.max_retries, args.gpus_per_run)
    result = run_sweep(
        spec,
        out,
        backend=backend,
        probes=args.probes,
        probe_eval_size=args.probe_eval_size,
        progress=not args.no_progress,
        log=print,
        vectorise={"auto": None, "yes": True, "no": False}[args.vectorise],
    )
    counts = ", ".join(f"{n} {s}" for s, n in result.counts().items() if n)
    print(f"sweep folder: {result.out} ({SPEC}, {INDEX}: {counts})")
    print(f"results:      {result.out / RESULTS} ({len(result.results)} rows)")
    for fig in result.figures:
        print(f"phase:        {fig}")
    check_ok(result)


def cmd_reproduce(args: argparse.Namespace) -> None:
    from icl_circuits.reproduce import REPRODUCTIONS, reproduce
    from icl_circuits.reproduce.common import CLAIMS, SUMMARY

    if args.list or not args.name:
        width = max(map(len, REPRODUCTIONS))
        for name, (_, line) in REPRODUCTIONS.items():
            print(f"{name:{width}s}  {line}")
        return
    scale = "full" if args.full else args.scale
    out = Path(args.out) if args.out else Path("reproductions") / f"{args.name}-{scale}"
    if args.dry_run:
        from icl_circuits.reproduce.plan import describe

        print(describe(args.name, scale, out, args.workers))
        return
    rep = reproduce(args.name, out, scale=scale, workers=args.workers, progress=not args.no_progress)
    print(
        f"reproduction: {out} ({rep.seconds:.0f} s; {SUMMARY}, {CLAIMS}, {len(rep.tables)} tables, {len(rep.figures)} figures)"
    )
    print(rep.claims_markdown(), end="")


def _parse_heads(text: str, shape: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """``"0.1,1.0"`` -> ((0, 1), (1, 0)), checked against ``shape = (n_layers, n_heads)``."""
    heads = []
    for item in filter(None, text.split(",")):
        layer, _, head = item.partition(".")
        if not (layer.isdigit() and head.isdigit()):
            raise ICLError(f"heads: expected LAYER.HEAD items like 1.0, got {item!r}")
        if int(layer) >= shape[0] or int(head) >= shape[1]:
            raise ICLError(
                f"heads: {item} is out of range (the model has layers 0..{shape[0] - 1}, heads 0..{shape[1] - 1})"
            )
        heads.append((int(layer), int(head)))
    return tuple(heads)


def check_writable(folder: Path, what: str, hint: str) -> None:
    """Raise a one-line ICLError unless a file can be created in ``folder`` (made if missing).

    A real probe, not ``os.access``: it also catches read-only file systems and root-owned
    folders the same way for every user.
    """
    folder = Path(folder)
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as err:
        raise ICLError(f"{folder}: cannot write {what} here ({err.strerror or err}); {hint}") from None
