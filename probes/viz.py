"""Attention patterns with readable token labels: circuitsvis HTML (offline-safe) and matplotlib.

circuitsvis renders each visualisation twice: ``RenderedHTML.local_src`` inlines its whole
JavaScript bundle, ``cdn_src`` imports it from unpkg.com, and Jupyter's display and ``str()``
pick the CDN one whenever a network is reachable: blank when opened offline later. Every
render here has the inlined version as both sources (the bundle once, however many panels);
:func:`save_html` and :func:`show` only ever emit that.

Patterns are ``[batch, head_index, query_pos, key_pos]`` per layer, as in
``blocks.{l}.attn.hook_pattern``; the token layout is ``x_1 y_1 ... x_N y_N x_query``.
"""

from __future__ import annotations

import html
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)

import circuitsvis as cv  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from circuitsvis.utils.render import RenderedHTML  # noqa: E402
from torch import Tensor  # noqa: E402

from icl_circuits.data.batch import Batch  # noqa: E402
from icl_circuits.runs.read import load_model  # noqa: E402
from probes.scores import pattern_scores  # noqa: E402

#: How circuitsvis lays out ``local_src``: a div, then one module script holding the bundle
#: and the render call. Panels are merged so that the bundle appears once per document.
_LOCAL = re.compile(
    r'^\s*<div id="(?P<id>[^"]+)"[^>]*/>\s*<script crossorigin type="module">\s*(?P<js>.*)'
    r"\n\s*CircuitsVis\.render\((?P<call>.*)\)\s*</script>\s*$",
    re.DOTALL,
)
_CDN_MARKERS = ("unpkg.com", "jsdelivr", "cdn.", '<script src="http', "<script src='http")


def token_labels(batch: Batch, index: int = 0) -> list[str]:
    """Readable labels of every position of sequence ``index``.

    Returns:
        ``seq_len`` strings: ``"x (class 17)"`` at exemplars, ``"label 5"`` at labels and
        ``"query (class 17)"`` at the last position; in the packed layout one string per
        item, ``"x (class 17) label 5"``, then the query.
    """
    classes = batch.classes[index].tolist()
    labels = batch.context_labels[index].tolist()
    out = []
    for c, y in zip(classes[:-1], labels, strict=True):
        out += [f"x (class {c}) label {y}"] if batch.packed else [f"x (class {c})", f"label {y}"]
    return out + [f"query (class {classes[-1]})"]


def _cv_tokens(tokens: list[str]) -> list[str]:
    """circuitsvis strips whitespace from axis labels ("label5"): join words with "_" instead."""
    return [t.replace(" ", "_") for t in tokens]


def _as_model(model, step: int | None):
    """A bridge as given, or checkpoint ``step`` (default: latest) of a run folder."""
    if isinstance(model, str | os.PathLike):  # a path or an icl_circuits.Run
        return load_model(Path(model), step)
    return model


@torch.no_grad()
def attention_patterns(model, batch: Batch) -> Tensor:
    """``[n_layers, batch, head_index, query_pos, key_pos]`` attention patterns of ``batch``."""
    _, cache = model.run_with_cache(batch.tokens(), names_filter=lambda n: n.endswith("attn.hook_pattern"))
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(model.cfg.n_layers)]).cpu()


def top_induction_head(model, batch: Batch) -> tuple[int, int]:
    """``(layer, head)`` with the highest task-induction score on ``batch`` (layer >= 1 if any)."""
    scores = pattern_scores(attention_patterns(model, batch), batch)
    rows = scores[scores.metric == "task_induction"]
    if model.cfg.n_layers > 1:
        rows = rows[rows.layer >= 1]
    best = rows.sort_values("value", ascending=False).iloc[0]
    return int(best.layer), int(best.head_index)


def _select(patterns: Tensor, layer: int | None, head: int | None) -> tuple[Tensor, list[str]]:
    """Patterns ``[n_layers, head_index, q, k]`` of one sequence -> ``([n, q, k], names)``."""
    n_layers, n_heads = patterns.shape[:2]
    layers = range(n_layers) if layer is None else [layer]
    heads = range(n_heads) if head is None else [head]
    if head is not None and layer is None:
        raise ValueError("head: give the layer too (e.g. layer=1, head=0)")
    pairs = [(lay, h) for lay in layers for h in heads]
    for lay, h in pairs:
        if not (0 <= lay < n_layers and 0 <= h < n_heads):
            raise ValueError(f"head: L{lay}H{h} is out of range for {n_layers} layers x {n_heads} heads")
    return torch.stack([patterns[lay, h] for lay, h in pairs]), [f"L{lay}H{h}" for lay, h in pairs]


Panel = tuple[str, RenderedHTML]


def _rows(item: Panel | RenderedHTML) -> list[list[Panel]]:
    """Rows of raw circuitsvis panels that ``item`` was built from (one panel if it is raw)."""
    if isinstance(item, RenderedHTML):
        return getattr(item, "rows", None) or [[("", item)]]
    return [[item]]


def _build(rows: list[list[Panel]]) -> RenderedHTML:
    """One fragment: a grid per row of titled panels, then one script with the bundle once.

    Both sources of the result are the inlined version, so it never reaches for the network
    however it is displayed; its ``rows`` let :func:`combine` / :func:`stack` reuse it.
    """
    grid = "display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 16px;"
    sections, calls, bundle = [], [], None
    for row in rows:
        divs = []
        for title, rendered in row:
            heading = f"<h3>{html.escape(title)}</h3>" if title else ""
            m = _LOCAL.match(rendered.local_src)
            if m is None:  # an unknown circuitsvis layout: keep the panel whole (correct, bigger)
                divs.append(f"<div>{heading}{rendered.local_src}</div>")
                continue
            bundle = bundle or re.sub(r"//# sourceMappingURL=\S+", "", m["js"])
            uid = f"icl-attn-{uuid.uuid4().hex[:12]}"  # fresh: a page may show the same panel twice
            cell = "min-width: 0; padding: 0 6px; overflow: hidden;"
            divs.append(f'<div style="{cell}">{heading}<div id="{uid}"></div></div>')
            calls.append(f"CircuitsVis.render({m['call'].replace(m['id'], uid, 1)});")
        sections.append(f'<div style="{grid}">\n' + "\n".join(divs) + "\n</div>")
    out = '<div style="font-family: sans-serif;">\n' + "\n".join(sections) + "\n</div>\n"
    if calls:
        out += '<script crossorigin type="module">\n' + bundle + "\n" + "\n".join(calls) + "\n</script>\n"
    rendered = RenderedHTML(out, out)
    rendered.rows = rows
    return rendered


def combine(panels: Sequence[Panel | RenderedHTML], columns: bool = True) -> RenderedHTML:
    """Several circuitsvis renders in one fragment that loads the bundle once.

    Args:
        panels: ``(title, rendered)`` pairs of circuitsvis renders, or renders of this module
            (which keep their own titles), in display order.
        columns: side by side in one wrapping grid, rather than one under another.
    """
    flat = [panel for item in panels for row in _rows(item) for panel in row]
    return _build([flat] if columns else [[panel] for panel in flat])


def stack(renders: Sequence[Panel | RenderedHTML]) -> RenderedHTML:
    """Renders one under another, each keeping its own layout; the bundle still loads once."""
    return _build([row for item in renders for row in _rows(item)])


def attention_html(
    model, batch: Batch, index: int = 0, layer: int | None = None, head: int | None = None, step: int | None = None
) -> RenderedHTML:
    """Interactive attention patterns of sequence ``index``: one head, a layer, or every head.

    Args:
        model: a TransformerBridge, or a run folder (then checkpoint ``step`` is loaded).
        batch: evaluation batch; only sequence ``index`` is shown.
        index: which sequence of the batch.
        layer: one layer's heads (default: all layers).
        head: one head of ``layer`` (default: all heads).
        step: the checkpoint step, for the title (and to pick the checkpoint of a run folder).

    Returns:
        circuitsvis RenderedHTML (inlined bundle) with heads named ``L1H0`` etc.
    """
    model = _as_model(model, step)
    one = batch[index : index + 1]
    patterns, names = _select(attention_patterns(model, one)[:, 0], layer, head)
    tokens = _cv_tokens(token_labels(one))
    if len(names) == 1:
        rendered = cv.attention.attention_pattern(tokens=tokens, attention=patterns[0], mask_upper_tri=True)
    else:
        rendered = cv.attention.attention_heads(
            attention=patterns, tokens=tokens, attention_head_names=names, mask_upper_tri=True
        )
    title = ", ".join(names) if len(names) == 1 else f"{len(names)} heads"
    return _build([[(title if step is None else f"step {step}: {title}", rendered)]])


def heads_across_checkpoints_html(
    run: Path | str, steps: Sequence[int], layer: int, head: int, batch: Batch, index: int = 0
) -> RenderedHTML:
    """One head on the same sequence at several checkpoints, side by side."""
    one = batch[index : index + 1]
    tokens = _cv_tokens(token_labels(one))
    panels = []
    for step in steps:
        pattern = attention_patterns(load_model(Path(run), step), one)[layer, 0, head]  # [query_pos, key_pos]
        rendered = cv.attention.attention_pattern(tokens=tokens, attention=pattern, mask_upper_tri=True)
        panels.append((f"L{layer}H{head} at step {step}", rendered))
    return _build([panels])


def _frame_panels(model, batch: Batch, index: int, layer: int | None, head: int | None, step: int):
    """The raw circuitsvis render of one checkpoint and its title (as :func:`attention_html`)."""
    rendered = attention_html(model, batch, index, layer, head, step)
    return rendered.rows[0][0]


#: The scrubber's script: shows the chosen frame, rendering it the first time it is shown (a
#: circuitsvis view measures its container, so it is drawn only once visible). ``#frame=K`` in
#: the address moves the slider to frame K through the same input event a drag sends.
_SCRUB_JS = """
const root = document.getElementById("%(uid)s");
const slider = root.querySelector("input[type=range]");
const label = root.querySelector(".icl-scrub-step");
const frames = root.querySelectorAll(".icl-scrub-frame");
const drawn = new Set();
function showFrame(k) {
  frames.forEach((f, i) => { f.style.display = i === k ? "" : "none"; });
  label.textContent = "step " + frames[k].dataset.step;
  if (!drawn.has(k)) { drawn.add(k); draws[k](); }
}
slider.addEventListener("input", () => showFrame(Number(slider.value)));
const wanted = /frame=(\\d+)/.exec(location.hash);
if (wanted) { slider.value = Math.min(Number(wanted[1]), frames.length - 1); }
slider.dispatchEvent(new Event("input"));
"""


def scrub_html(
    run: Path | str,
    steps: Sequence[int],
    batch: Batch,
    index: int = 0,
    layer: int | None = None,
    head: int | None = None,
) -> RenderedHTML:
    """Attention over training with a slider: one head (or a layer's, or every head) per checkpoint.

    Every checkpoint's circuitsvis view is inlined (the bundle once) with a range slider and a
    small script that shows the chosen one, so a saved file (:func:`save_html`) keeps the
    slider and works offline. In a notebook, ``show(scrub_html(...))`` displays it too.

    Args:
        run: a run folder.
        steps: checkpoint steps, in slider order.
        batch: evaluation batch; only sequence ``index`` is shown.
        index: which sequence.
        layer, head: one head (both), a layer's heads (``layer``) or every head (neither).

    Returns:
        A RenderedHTML (inlined; ``local_src`` and ``cdn_src`` are the same).
    """
    if not steps:
        raise ValueError("steps: give at least one checkpoint step")
    uid = f"icl-scrub-{uuid.uuid4().hex[:12]}"
    frames, draws, bundle = [], [], None
    for k, step in enumerate(steps):
        title, rendered = _frame_panels(Path(run), batch, index, layer, head, int(step))
        m = _LOCAL.match(rendered.local_src)
        if m is None:
            raise ValueError("circuitsvis: unknown render layout; cannot inline the frames")
        bundle = bundle or re.sub(r"//# sourceMappingURL=\S+", "", m["js"])
        target = f"{uid}-{k}"
        style = "" if k == 0 else ' style="display: none"'
        frames.append(
            f'<div class="icl-scrub-frame" data-step="{int(step)}"{style}><h3>{html.escape(title)}</h3>'
            f'<div id="{target}"></div></div>'
        )
        draws.append(f"() => CircuitsVis.render({m['call'].replace(m['id'], target, 1)})")
    control = (
        f'<label>checkpoint <input type="range" min="0" max="{len(steps) - 1}" value="0" step="1" '
        f'style="width: 60%; vertical-align: middle;"> <b class="icl-scrub-step">step {int(steps[0])}</b></label>'
    )
    out = (
        f'<div id="{uid}" style="font-family: sans-serif;">\n{control}\n'
        + "\n".join(frames)
        + '\n</div>\n<script crossorigin type="module">\n'
        + bundle
        + "\nconst draws = [\n"
        + ",\n".join(draws)
        + "\n];\n"
        + _SCRUB_JS % {"uid": uid}
        + "</script>\n"
    )
    return RenderedHTML(out, out)


def save_html(
    rendered: RenderedHTML | Sequence[RenderedHTML] | str, path: Path | str, title: str = "icl-circuits attention"
) -> Path:
    """Write a standalone HTML file that needs no network (the bundle is inlined).

    Args:
        rendered: a render, several (stacked one under another, see :func:`stack`), or HTML.
        path: the file to write.
        title: the page title.

    Raises:
        ValueError: the HTML refers to a CDN (never the case for this module's renders).
    """
    if not isinstance(rendered, str | RenderedHTML):
        rendered = stack(rendered)
    body = rendered if isinstance(rendered, str) else rendered.local_src
    bad = [m for m in _CDN_MARKERS if m in body]
    if bad:
        raise ValueError(f"rendered: refers to external scripts ({bad[0]}); pass an inlined render")
    path = Path(path)
    doc = f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
    path.write_text(doc + f"<body>\n{body}</body></html>\n", encoding="utf-8")
    return path


def show(rendered: RenderedHTML):
    """An IPython HTML object of the inlined render, for notebooks (displays offline too)."""
    from IPython.display import HTML

    return HTML(rendered.local_src)


# ---------------------------------------------------------------------------- matplotlib
KEY_LABEL = "key position (attended to)"
QUERY_LABEL = "query position (attending)"
WEIGHT_LABEL = "attention weight"


def _draw(ax, pattern: Tensor, tokens: list[str] | None, title: str):
    """imshow of ``pattern [query_pos, key_pos]`` with the causal upper triangle blank."""
    n = pattern.shape[-1]
    grid = np.where(np.tril(np.ones((n, n), dtype=bool)), pattern.numpy(), np.nan)
    im = ax.imshow(grid, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    if tokens is None:
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_xticks(range(n), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(n), tokens, fontsize=7)
    return im


def attention_figure(model, batch: Batch, index: int = 0, layer: int = 1, head: int = 0, step: int | None = None):
    """One head's pattern on sequence ``index``: rows are queries, columns keys."""
    model = _as_model(model, step)
    one = batch[index : index + 1]
    pattern = attention_patterns(model, one)[layer, 0, head]
    n = pattern.shape[-1]
    fig, ax = plt.subplots(figsize=(0.3 * n + 3, 0.3 * n + 2.5))
    im = _draw(ax, pattern, token_labels(one), f"L{layer}H{head}" + ("" if step is None else f" at step {step}"))
    ax.set_xlabel(KEY_LABEL)
    ax.set_ylabel(QUERY_LABEL)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=WEIGHT_LABEL)
    fig.tight_layout()
    return fig


def heads_grid_figure(model, batch: Batch, index: int = 0, step: int | None = None):
    """Every head's pattern on sequence ``index``: one row per layer, one column per head."""
    model = _as_model(model, step)
    one = batch[index : index + 1]
    patterns = attention_patterns(model, one)[:, 0]  # [n_layers, head_index, query_pos, key_pos]
    n_layers, n_heads, n = patterns.shape[:3]
    labeled = n_layers * n_heads <= 16
    size = (0.25 * n + 1.5) if labeled else 1.6
    fig, axes = plt.subplots(
        n_layers, n_heads, figsize=(size * n_heads + 1, size * n_layers + 0.5), squeeze=False, layout="constrained"
    )
    tokens = token_labels(one)
    for lay in range(n_layers):
        for h in range(n_heads):
            im = _draw(axes[lay][h], patterns[lay, h], tokens if labeled else None, f"L{lay}H{h}")
            if labeled and h > 0:
                axes[lay][h].set_yticklabels([])
            if labeled and lay < n_layers - 1:
                axes[lay][h].set_xticklabels([])
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02, label=WEIGHT_LABEL)
    fig.suptitle("attention patterns" + ("" if step is None else f" at step {step}"))
    fig.supxlabel(KEY_LABEL)
    fig.supylabel(QUERY_LABEL)
    return fig


def head_over_checkpoints_figure(
    run: Path | str, steps: Sequence[int], layer: int, head: int, batch: Batch, index: int = 0
):
    """One head on the same sequence at several checkpoints, side by side."""
    one = batch[index : index + 1]
    tokens = token_labels(one)
    n = one.seq_len
    fig, axes = plt.subplots(
        1, len(steps), figsize=((0.25 * n + 1.5) * len(steps) + 1, 0.25 * n + 2.5), squeeze=False, layout="constrained"
    )
    for i, step in enumerate(steps):
        pattern = attention_patterns(load_model(Path(run), step), one)[layer, 0, head]
        im = _draw(axes[0][i], pattern, tokens, f"step {step}")
        if i > 0:
            axes[0][i].set_yticklabels([])
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02, label=WEIGHT_LABEL)
    fig.suptitle(f"L{layer}H{head} over training")
    fig.supxlabel(KEY_LABEL)
    fig.supylabel(QUERY_LABEL)
    return fig
