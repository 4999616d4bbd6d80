"""Training loop: frequent checkpoints, evaluations at each, exact resume.

A run is a pure function of its config: the training batch of step ``t`` depends only on
``(seed, t)``, the optimiser state is checkpointed, and the learning rate is a function of
the step. Re-running ``train`` on a stopped run therefore continues from its latest good
checkpoint and ends with the same metrics and weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import platform
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from icl_circuits.config import RunConfig
from icl_circuits.data import build_source
from icl_circuits.errors import DivergedError, RunFolderError
from icl_circuits.limits import check_memory
from icl_circuits.models.build import build_native, query_logits
from icl_circuits.runs import layout
from icl_circuits.runs.read import config_json, load_config, model_shape
from icl_circuits.runs.store import (
    append_lines,
    flatten_optimizer,
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    run_lock,
    save_checkpoint,
    unflatten_optimizer,
    write_new_file,
)
from icl_circuits.training.evaluate import eval_sets, evaluate
from icl_circuits.training.optim import build_optimizer, l2_penalty, split_params
from icl_circuits.training.schedule import checkpoint_steps, lr_at
from icl_circuits.training.tracking import check_logger, open_logger


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunFolderError(f"train.device: {name} requested but no CUDA device is available")
    return torch.device(name)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(cfg: RunConfig, device: torch.device) -> dict:
    import transformer_lens

    from icl_circuits import __version__

    return {
        "icl_circuits": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "transformer_lens": getattr(transformer_lens, "__version__", None),
        "python": platform.python_version(),
        "host": platform.node(),
        "seed": cfg.seed,
        "device": str(device),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _prepare_folder(cfg: RunConfig, run: Path, device: torch.device) -> None:
    """Create the run folder, or check that an existing one holds this very config."""
    if (run / layout.CONFIG).exists():
        stored = load_config(run)
        if stored != cfg:
            a, b = stored.to_dict(), cfg.to_dict()
            diff = _first_difference(a, b)
            raise RunFolderError(
                f"{run / layout.CONFIG}: this run folder holds a different config ({diff}); "
                "resume with the same config or choose another output folder"
            )
        return
    if run.exists() and not run.is_dir():
        raise RunFolderError(f"{run}: exists and is not a folder; choose another output folder (--out)")
    if run.exists() and any(p.name != layout.LOCK for p in run.iterdir()):
        raise RunFolderError(f"{run}: exists, is not empty and has no {layout.CONFIG}; not a run folder")
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(
            f"{run}: cannot create the run folder ({err.strerror or err}); choose another (--out)"
        ) from None
    write_new_file(run / layout.PROVENANCE, json.dumps(provenance(cfg, device), indent=2, allow_nan=False).encode())
    # config.json last: its presence marks a usable run folder.
    write_new_file(
        run / layout.CONFIG, json.dumps(config_json(cfg), indent=2, sort_keys=True, allow_nan=False).encode()
    )


def _complete(run: Path, steps: int) -> bool:
    """Whether the run's last checkpoint is its final step and verifies."""
    done = list_checkpoints(run)
    return bool(done) and done[-1] == steps and latest_good_checkpoint(run) == steps


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            if va != vb:
                return _first_difference(va, vb, f"{prefix}{key}.")
        elif va != vb:
            return f"{prefix}{key}: stored {va!r}, given {vb!r}"
    return "no difference"


@contextlib.contextmanager
def torch_threads(n: int):
    """Use ``n`` torch CPU threads inside the block (0: leave torch's choice); restored after."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _diverged(what: str, value: float, step: int, run: Path) -> DivergedError:
    steps = list_checkpoints(run)
    kept = f"its last good checkpoint, step {steps[-1]}, is kept" if steps else "no checkpoint was saved"
    return DivergedError(
        f"train: {what} became {value} by step {step}; training stopped and {kept} (nothing after it "
        "was written); lower train.lr or set train.grad_clip, in a new run folder"
    )


def train(cfg: RunConfig, run: Path | str, progress: bool = True, stop_after: int | None = None) -> Path:
    """Train ``cfg`` into the run folder ``run``, resuming it if it already exists.

    Runs with ``cfg.train.threads`` torch threads (1 by default: bitwise reproducible).

    Args:
        cfg: the full run config.
        run: run folder (created if missing).
        progress: show a tqdm bar with the live loss and ICL/IWL accuracy.
        stop_after: stop (cleanly, as a crash would) once this step is checkpointed;
            for tests and for splitting a run across jobs.

    Returns:
        The run folder.

    Raises:
        DivergedError: the loss became NaN or infinite; checkpoints before it are kept.
    """
    with torch_threads(cfg.train.threads):
        return _train(cfg, Path(run), progress, stop_after)


def _train(cfg: RunConfig, run: Path, progress: bool, stop_after: int | None) -> Path:
    device = resolve_device(cfg.train.device)
    check_memory(cfg, device)
    # Everything that can fail on bad input happens before the folder is touched.
    source = build_source(cfg.data, cfg.seed, device)
    model = build_native(cfg.model, seed=cfg.seed, **model_shape(cfg, source)).to(device)
    tc = cfg.train
    optimizer = build_optimizer(model, tc)
    decayed, _ = split_params(model, tc.decay_on)
    schedule = checkpoint_steps(tc.steps, tc.n_checkpoints, tc.checkpoint_every)
    check_logger(cfg)
    _prepare_folder(cfg, run, device)
    if _complete(run, tc.steps):
        return run  # nothing to train: no lock, no write (a finished run may be read-only)

    with run_lock(run):
        start = latest_good_checkpoint(run)
        bad = [s for s in list_checkpoints(run) if start is None or s > start]
        if bad:
            raise RunFolderError(
                f"{layout.checkpoint_dir(run, bad[0])}: corrupt checkpoint after the last good one "
                f"(step {start}); move it aside to resume from step {start}"
            )
        evals = eval_sets(source, tc.eval_size)
        fresh = start is None
        if start is None:
            with torch.no_grad():
                b0 = source.train_batch(0, tc.batch_size)
                loss0 = F.cross_entropy(query_logits(model, b0.tokens()), b0.target).item()
            rows = _checkpoint(run, 0, model, optimizer.state_dict(), evals, source.n_labels, loss0, device)
            start = 0
        else:
            ckpt = load_checkpoint(run, start)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(unflatten_optimizer(ckpt["optim"], ckpt["state"]["optim"]))
            torch.set_rng_state(ckpt["rng"]["cpu"])
            rows = ckpt["state"].get("metrics", [])
        last_metrics = _headline(rows, source)
        step_model = torch.compile(model) if tc.compile else model
        model.train()
        marks = [s for s in schedule if s > start]
        bar = tqdm(total=tc.steps, initial=start, disable=not progress, desc=cfg.name, unit="step", dynamic_ncols=True)
        loss_sum = torch.zeros((), device=device)
        n_since = 0
        tracker = open_logger(cfg, run)
        try:
            if fresh:
                tracker.log(0, rows)
            for step in range(start, tc.steps):
                lr = lr_at(tc, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = source.train_batch(step, tc.batch_size)
                loss = F.cross_entropy(query_logits(step_model, batch.tokens()), batch.target)
                total = loss + tc.l2 * l2_penalty(decayed) if tc.l2 > 0 and decayed else loss
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                loss_sum += loss.detach()
                n_since += 1
                done = step + 1
                bar.update(1)
                if marks and done == marks[0]:
                    marks.pop(0)
                    train_loss = (loss_sum / n_since).item()
                    if not math.isfinite(train_loss):
                        raise _diverged("the training loss", train_loss, done, run)
                    rows = _checkpoint(
                        run, done, model, optimizer.state_dict(), evals, source.n_labels, train_loss, device
                    )
                    tracker.log(done, rows)
                    last_metrics = _headline(rows, source)
                    loss_sum.zero_()
                    n_since = 0
                    bar.set_postfix(last_metrics, refresh=False)
                    if stop_after is not None and done >= stop_after:
                        break
                elif done % 50 == 0:
                    value = loss.item()
                    if not math.isfinite(value):
                        raise _diverged("the training loss", value, done, run)
                    bar.set_postfix({"loss": f"{value:.3f}", **last_metrics}, refresh=False)
        finally:
            bar.close()
            tracker.close()
    return run


def _headline(rows: list[dict], source) -> dict[str, str]:
    get = {(r["split"], r["metric"]): r["value"] for r in rows}
    out = {"loss": f"{get.get(('train', 'loss'), float('nan')):.3f}"}
    out["ICL"] = f"{get.get((source.icl_split, 'acc'), float('nan')):.2f}"
    out["IWL"] = f"{get.get((source.iwl_split, 'acc'), float('nan')):.2f}"
    return out


def _checkpoint(run, step, model, optim_state, evals, n_labels, train_loss, device) -> list[dict]:
    """Evaluate ``model``, save it with ``optim_state`` (an optimiser ``state_dict()``), log metrics.

    Takes the optimiser's state dict rather than the optimiser so that the vectorised-seed
    trainer (``ensemble.py``) can save each seed's slice of a stacked optimiser.
    """
    rows = [{"split": "train", "metric": "loss", "value": train_loss}]
    rows += evaluate(model, evals, n_labels)
    bad = next((r for r in rows if not math.isfinite(r["value"])), None)
    if bad is not None:
        raise _diverged(f"{bad['split']} {bad['metric']}", bad["value"], step, run)
    optim_tensors, optim_meta = flatten_optimizer(optim_state)
    rng = {"cpu": torch.get_rng_state()}
    state = {"step": step, "optim": optim_meta, "metrics": rows, "device": str(device)}
    save_checkpoint(run, step, model.state_dict(), optim_tensors, rng, state)
    append_lines(run / layout.METRICS, [json.dumps({"step": step, **row}, allow_nan=False) for row in rows])
    return rows
