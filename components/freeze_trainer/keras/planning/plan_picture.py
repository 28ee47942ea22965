"""Draws phase plans: the model as a strip of its groups (width ∝ parameters), one row per phase,
coloured by state and BatchNorm mode, with the learning rates written in. `freeze-policy plan --picture`.

matplotlib is imported inside `plan_figure` only, and drives no GUI: the figure is a plain `Figure` on the
Agg canvas (SVG files go through matplotlib's SVG canvas), so it works headless and leaves pyplot's
global state alone.
"""

from __future__ import annotations

import os

from freeze_trainer.keras.planning.freeze_plan import HEAD_GROUP, PhasePlan
from freeze_trainer.keras.planning.phase_schedule import phase_length
from freeze_trainer.keras.planning.plan_report import GroupState, format_lr, group_states, lr_text

PICTURE_FORMATS = (".png", ".svg")
DPI = 100
WIDTH_IN = 12.0
_TOP_IN, _ROW_IN, _BOTTOM_IN = 0.9, 0.8, 1.1  # title and legend; one phase; the group names
_LEFT_IN, _RIGHT_IN = 1.9, 0.3
_MIN_SHARE = 0.004  # a group with (almost) no parameters still shows as a sliver of the strip
_BAND = 0.28  # the BatchNorm band: this share of a row's height, along its bottom
# Names are the user's (phases, layers): drawn as written, never read as mathtext (`$\frac{$` raises) or TeX.
LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}
# SVG text stays text, and SVG ids are stable, so the same plan gives the same file.
_RC = {"svg.fonttype": "none", "svg.hashsalt": "freeze-policy-plan", "font.size": 8, **LITERAL_TEXT}

STATE_COLOURS = {"frozen": "#c9ced6", "trainable": "#2f7fd1", "mixed": "#9dc3ea"}
BATCHNORM_COLOURS = {"frozen": "#5d6670", "affine": "#f0a23b", "train": "#c8432f"}


def picture_size(phases: int) -> tuple[float, float]:
    """The figure's (width, height) in inches for a plan of `phases` phases; pixels are these × DPI."""
    return WIDTH_IN, _TOP_IN + _ROW_IN * phases + _BOTTOM_IN


def check_picture_path(path: str) -> None:
    if os.path.splitext(path)[1].lower() not in PICTURE_FORMATS:
        raise ValueError(f"a plan picture is a {' or '.join(PICTURE_FORMATS)} file, got {path!r}")


def _widths(groups: list[GroupState]) -> list[float]:
    sizes = [group.trainable_params + group.frozen_params for group in groups]
    total = sum(sizes) or len(sizes)
    return [max(size / total, _MIN_SHARE) for size in sizes]


def _batchnorm_colour(group: GroupState) -> tuple[str | None, bool]:
    """The band's colour (the most trainable mode in the group) and whether the group mixes modes."""
    modes = group.batchnorm
    if not modes:
        return None, False
    top = max(modes, key=list(BATCHNORM_COLOURS).index)
    return BATCHNORM_COLOURS[top], len(modes) > 1


def draw_plan(plans: list[PhasePlan], path: str, title: str | None = None) -> None:
    """Writes the plans' picture to `path` (.png or .svg, by its suffix)."""
    check_picture_path(path)
    import matplotlib

    with matplotlib.rc_context(_RC):  # the SVG settings apply when the file is written
        plan_figure(plans, title).savefig(path, dpi=DPI, metadata={"Date": None} if path.lower().endswith(".svg") else None)


def plan_figure(plans: list[PhasePlan], title: str | None = None):
    """The plans' picture as a matplotlib `Figure` on the Agg canvas (the run report embeds it as PNG)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    width_in, height_in = picture_size(len(plans))
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(width_in, height_in), dpi=DPI)
        FigureCanvasAgg(figure)
        strip_in = width_in - _LEFT_IN - _RIGHT_IN
        axes = figure.add_axes((
            _LEFT_IN / width_in, _BOTTOM_IN / height_in, strip_in / width_in, _ROW_IN * len(plans) / height_in,
        ))
        groups = group_states(plans[0])
        widths = _widths(groups)
        starts = [sum(widths[:index]) for index in range(len(widths))]
        total = sum(widths)

        for row, plan in enumerate(plans):
            y = len(plans) - 1 - row  # the first phase on top
            for group, start, share in zip(group_states(plan), starts, widths):
                axes.add_patch(Rectangle((start, y + 0.08), share, 0.84, facecolor=STATE_COLOURS[group.state],
                                         edgecolor="white", linewidth=0.8, hatch="//" if group.state == "mixed" else None))
                colour, mixed_modes = _batchnorm_colour(group)
                if colour:
                    axes.add_patch(Rectangle((start, y + 0.08), share, 0.84 * _BAND, facecolor=colour,
                                             edgecolor="white", linewidth=0.8, hatch=".." if mixed_modes else None))
                _write_rate(axes, group, start, share, share / total * strip_in, y)
            length = phase_length(plan)
            axes.text(-0.01 * total, y + 0.5, f"{row + 1}  {plan.phase.name}\nhead lr {format_lr(plan.learning_rate)}, "
                      f"{length}", ha="right", va="center", fontsize=8)

        _name_groups(axes, groups, starts, widths, total)
        axes.set_xlim(0, total)
        axes.set_ylim(0, len(plans))
        axes.axis("off")
        legend = [Patch(facecolor=colour, label=state) for state, colour in STATE_COLOURS.items()]
        legend += [Patch(facecolor=colour, label=f"BatchNorm {mode}") for mode, colour in BATCHNORM_COLOURS.items()]
        figure.legend(handles=legend, loc="upper right", ncol=len(legend), frameon=False, fontsize=8,
                      bbox_to_anchor=(1 - _RIGHT_IN / width_in, 1 - 0.42 / height_in))
        figure.text(_LEFT_IN / width_in, 1 - 0.25 / height_in,
                    title or "freeze plan: one row per phase, width ∝ parameters", fontsize=10, va="center")
    return figure


def _write_rate(axes, group: GroupState, start: float, share: float, width_in: float, y: float) -> None:
    """The group's rate(s) inside its segment: across when they fit, upward when only that does."""
    if not group.learning_rates:
        return
    text = lr_text(group.learning_rates)
    length_in = 0.055 * len(text)  # 7 pt
    if width_in >= length_in + 0.1:
        rotation = 0
    elif width_in >= 0.16 and length_in <= 0.84 * (1 - _BAND) * _ROW_IN - 0.04:
        rotation = 90
    else:
        return
    axes.text(start + share / 2, y + 0.08 + 0.84 * (0.5 + _BAND / 2), text, ha="center", va="center",
              rotation=rotation, fontsize=7, color="white" if group.state == "trainable" else "black")


def _name_groups(axes, groups: list[GroupState], starts: list[float], widths: list[float], total: float) -> None:
    """Group names in evenly spaced slots under the strip, each joined to its segment by a thin line."""
    slot = total / len(groups)
    for index, (group, start, share) in enumerate(zip(groups, starts, widths)):
        centre, label_x = start + share / 2, slot * (index + 0.5)
        axes.plot([centre, label_x], [0.0, -0.3], color="#8a9099", linewidth=0.6, clip_on=False)
        axes.text(label_x, -0.34, group.name, rotation=55, ha="right", va="top", fontsize=7,
                  fontweight="bold" if group.name == HEAD_GROUP else "normal")
