"""Renders phase plans: by group (the default of `freeze-policy plan`), layer by layer (`--layers`), and
as plain data (`--format json`): each group's or layer's state, BatchNorm mode, learning rate and counts."""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from freeze_trainer.keras.planning.freeze_plan import HEAD_GROUP, LayerState, PhasePlan
from freeze_trainer.keras.planning.phase_schedule import (
    PhaseSchedule, ScheduledPhase, build_schedule, cache_clause, newly_trainable, phase_length,
)

_ROW = "{index:>4}  {name:<32} {cls:<22} {group:<10} {auto:<8} {state:<9} {bn:<7} {lr:<10} {train:>10} {frozen:>10}"


def _row(index, state: LayerState) -> str:
    return _ROW.format(
        index=index,
        name=state.name,
        cls=state.class_name,
        group=state.group,
        auto=state.auto_group_name,
        state="trainable" if state.trainable else "frozen",
        bn=state.batchnorm or "-",
        lr=f"{state.learning_rate:.3g}" if state.learning_rate is not None else "-",
        train=f"{state.trainable_params:,}",
        frozen=f"{state.frozen_params:,}",
    )


def transition_summary(plan: PhasePlan, previous: PhasePlan | None, first: bool) -> str:
    """How the phase starts and ends: its optimizer state, warm-up and restore_best ('' for a first phase
    that sets none of them). Newly trainable layers are counted when the previous phase is given."""
    phase = plan.phase
    new = len(newly_trainable(plan, previous))
    layers = f"{new} newly trainable layer(s)" if previous or first else "newly trainable layers"
    parts = []
    if not first or phase.optimizer_state is not None:
        mode = phase.optimizer_state_mode
        fresh = {"keep": "Adam state kept", "reset": "every variable starts a fresh Adam",
                 "reset_new": f"{layers} start a fresh Adam"}[mode]
        parts.append(f"optimizer state {mode} ({fresh})")
    if phase.warmup:
        parts.append(f"{layers} warm up {phase.warmup.describe()}")
    if phase.restores_best:
        parts.append("ends with its best epoch's weights (restore_best)")
    return "; ".join(parts)


def phase_summary(number: int, total: int, plan: PhasePlan, previous: PhasePlan | None = None,
                  cache: str | None = None) -> str:
    """`cache`: the run's words for its cache use (`ScheduledPhase.cache_clause`); None: the plan's."""
    length = phase_length(plan)
    trainable_layers = sum(state.trainable for state in plan.layers)
    cache = cache or cache_clause(plan)
    transition = transition_summary(plan, previous, number == 1)
    return (
        f"phase {number}/{total} {plan.phase.name!r}: {length}, head lr {plan.learning_rate:.3g}; "
        f"{trainable_layers} of {len(plan.layers)} layers trainable; "
        f"trainable params {plan.trainable_params:,}, frozen params {plan.frozen_params:,}; "
        f"{transition + '; ' if transition else ''}{cache}"
    )


def scheduled(plans: list[PhasePlan] | PhaseSchedule) -> PhaseSchedule:
    """A schedule's phases as they are; plans scheduled without a model (only phases whose whole base is
    frozen cache, and no phase says where it would cut)."""
    return plans if isinstance(plans, PhaseSchedule) else build_schedule(plans)


def format_plan(plans: list[PhasePlan] | PhaseSchedule) -> list[str]:
    """Every phase's summary, then its layers one per row. The cache words are the schedule's."""
    header = _ROW.format(index="#", name="layer", cls="class", group="group", auto="auto", state="state", bn="bn",
                         lr="lr", train="trainable", frozen="frozen")
    schedule, lines = scheduled(plans), []
    for phase in schedule:
        previous = schedule[phase.index - 1].plan if phase.index else None
        lines.append(phase_summary(phase.number, len(schedule), phase.plan, previous, phase.cache_clause))
        lines.append(header)
        lines.extend(_row(index, state) for index, state in enumerate(phase.plan.layers))
    return lines


# ---- The by-group view: what `freeze-policy plan` prints by default, and its JSON -----------------------

_GROUP_RUN = 3  # consecutive groups in the same state, at least this many, share one table row


@dataclass(frozen=True)
class GroupState:
    """One group's layers in one phase (the block of a backbone layer, `stem`, `top` or `head`)."""

    name: str
    layers: tuple[LayerState, ...]

    @property
    def state(self) -> str:
        """`trainable` when every layer with weights trains, `frozen` when none does, else `mixed`.
        BatchNorm layers count only where nothing else has weights or where they train and the rest does
        not: a trainable block whose BatchNorm stays `frozen` is `trainable` (the mode is its own column)."""
        weighted = [s for s in self.layers if s.trainable_params + s.frozen_params]
        core = {s.trainable for s in weighted if s.batchnorm is None}
        norms = {s.trainable for s in weighted if s.batchnorm is not None}
        flags = core or norms or {s.trainable for s in self.layers}
        if flags == {True}:
            return "trainable"
        return "frozen" if flags == {False} and True not in norms else "mixed"

    @property
    def batchnorm(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.batchnorm for s in self.layers if s.batchnorm))

    @property
    def learning_rates(self) -> tuple[float, ...]:
        return tuple(sorted({s.learning_rate for s in self.layers if s.learning_rate is not None}))

    @property
    def trainable_params(self) -> int:
        return sum(s.trainable_params for s in self.layers)

    @property
    def frozen_params(self) -> int:
        return sum(s.frozen_params for s in self.layers)

    def look(self) -> tuple:
        """What the table shows besides counts: groups that look alike may share a row."""
        return self.state, self.batchnorm, self.learning_rates, self.name == HEAD_GROUP


def group_states(plan: PhasePlan) -> list[GroupState]:
    """The plan's groups in model order (the order each group first appears)."""
    groups: dict[str, list[LayerState]] = {}
    for state in plan.layers:
        groups.setdefault(state.group, []).append(state)
    return [GroupState(name, tuple(layers)) for name, layers in groups.items()]


def format_lr(rate: float) -> str:
    """A rate as the policy would write it: 1e-2, 2.5e-3, 1e-4."""
    mantissa, exponent = f"{rate:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def lr_text(rates: tuple[float, ...]) -> str:
    if not rates:
        return "-"
    if len(rates) == 1:
        return format_lr(rates[0])
    return f"{format_lr(rates[0])}…{format_lr(rates[-1])}"


def _group_label(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]} ({len(names)} groups)"


def _runs(items: list, key) -> list[list]:
    """`items` cut into runs of consecutive equal `key`s; runs shorter than _GROUP_RUN are split up."""
    runs: list[list] = []
    for item in items:
        if runs and key(runs[-1][-1]) == key(item):
            runs[-1].append(item)
        else:
            runs.append([item])
    return [part for run in runs for part in ([run] if len(run) >= _GROUP_RUN else [[item] for item in run])]


def _change(before: GroupState, after: GroupState) -> str:
    parts = []
    if before.state != after.state:
        parts.append(f"{before.state} → {after.state}")
    if before.batchnorm != after.batchnorm:
        parts.append(f"batchnorm {'/'.join(before.batchnorm)} → {'/'.join(after.batchnorm)}")
    if before.learning_rates != after.learning_rates:
        if before.learning_rates and after.learning_rates:
            parts.append(f"lr {lr_text(before.learning_rates)} → {lr_text(after.learning_rates)}")
        elif after.learning_rates:
            parts.append(f"lr {lr_text(after.learning_rates)}")
    return ", ".join(parts)


def group_changes(plan: PhasePlan, previous: PhasePlan) -> list[tuple[list[str], str]]:
    """(group names, change) for every group whose state, BatchNorm mode or rates differ from the previous
    phase's; consecutive groups with the same change, _GROUP_RUN or more, are one entry."""
    before = {group.name: group for group in group_states(previous)}
    changed = [(group.name, _change(before[group.name], group)) for group in group_states(plan) if group.name in before]
    changed = [item for item in changed if item[1]]
    return [([name for name, _ in run], run[0][1]) for run in _runs(changed, key=lambda item: item[1])]


def _header(phase: ScheduledPhase, total: int) -> list[str]:
    plan = phase.plan
    trainable = sum(state.trainable for state in plan.layers)
    return [f"phase {phase.number}/{total} {plan.phase.name!r}: {phase_length(plan)}, "
            f"head lr {format_lr(plan.learning_rate)}, {trainable} of {len(plan.layers)} layers trainable",
            phase.cache_clause]


def _table(rows: list[tuple[str, ...]], right: set[int]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  " + "  ".join(cell.rjust(width) if column in right else cell.ljust(width)
                             for column, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]


def _packed(prefix: str, items: list[str], width: int, indent: str = "    ") -> list[str]:
    """`prefix` then the items joined by '; ', wrapped between items at `width` columns."""
    lines, line = [], prefix
    for index, item in enumerate(items):
        text = item + (";" if index < len(items) - 1 else "")
        if len(line) + 1 + len(text) > width:
            lines.append(line)
            line = indent + text
        else:
            line = f"{line} {text}"
    lines.append(line)
    return lines


def format_plan_groups(plans: list[PhasePlan] | PhaseSchedule, width: int = 100) -> list[str]:
    """Every phase as one table by group (runs of alike groups share a row), what changed from the phase
    before, and the totals; its cache use in the schedule's words (where it cuts, or why not)."""
    lines: list[str] = []
    schedule = scheduled(plans)
    plans = schedule.plans
    for phase in schedule:
        number, plan = phase.number, phase.plan
        previous = plans[number - 2] if number > 1 else None
        if lines:
            lines.append("")
        first, *rest = _header(phase, len(plans))
        lines.extend(_packed(first + ";", rest, width, indent="  "))
        transition = transition_summary(plan, previous, number == 1)
        if transition:
            lines.extend(_packed("  starts with:", transition.split("; "), width))
        rows = [("group", "layers", "state", "batchnorm", "lr", "trainable", "frozen")]
        for run in _runs(group_states(plan), key=GroupState.look):
            layers = [state for group in run for state in group.layers]
            first = run[0]
            rows.append((
                _group_label([group.name for group in run]), str(len(layers)), first.state,
                "/".join(first.batchnorm) or "-", lr_text(first.learning_rates),
                f"{sum(s.trainable_params for s in layers):,}", f"{sum(s.frozen_params for s in layers):,}",
            ))
        rows.append(("total", str(len(plan.layers)), "", "", "", f"{plan.trainable_params:,}", f"{plan.frozen_params:,}"))
        lines.extend(_table(rows, right={1, 5, 6}))
        if previous is not None:
            changes = group_changes(plan, previous)
            items = [f"{_group_label(names)}: {change}" for names, change in changes] or ["none"]
            lines.extend(_packed(f"  changes from phase {number - 1}:", items, width))
    return lines


def _group_dict(group: GroupState) -> dict:
    return {
        "name": group.name,
        "layers": [state.name for state in group.layers],
        "state": group.state,
        "batchnorm": list(group.batchnorm),
        "learning_rates": list(group.learning_rates),
        "trainable_params": group.trainable_params,
        "frozen_params": group.frozen_params,
    }


def _layer_dict(state: LayerState) -> dict:
    return {
        "name": state.name,
        "class_name": state.class_name,
        "group": state.group,
        "auto_group": state.auto_group,
        "auto_group_name": state.auto_group_name,
        "trainable": state.trainable,
        "batchnorm": state.batchnorm,
        "learning_rate": state.learning_rate,
        "trainable_params": state.trainable_params,
        "frozen_params": state.frozen_params,
    }


def input_shapes(model: tf.keras.Model) -> dict[str, list[int | None]]:
    """Each input of the model by name, with its shape without the batch dimension."""
    return {name: list(tensor.shape[1:]) for name, tensor in zip(model.input_names, model.inputs)}


def format_inputs(shapes: dict[str, list[int | None]]) -> str:
    """`input features (13,)`, or `inputs a (1,), b (1,)` for a model with several."""
    described = ", ".join(f"{name} {tuple(shape)}" for name, shape in shapes.items())
    return f"input{'s' if len(shapes) > 1 else ''} {described}"


def plan_dict(plans: list[PhasePlan] | PhaseSchedule, context: dict | None = None) -> dict:
    """The plan as plain data (json.dumps-able, the same keys every time): `context` (what was planned, the
    defaults), then per phase its length, rates, transition, feature cache (the schedule's: where it cuts
    and the cached bytes per example, or why not), totals, groups, changes from the phase before (each
    changed group's state, BatchNorm modes and rates, before and after) and layers."""
    phases, schedule = [], scheduled(plans)
    plans = schedule.plans
    for phase in schedule:
        number, plan = phase.number, phase.plan
        previous = plans[number - 2] if number > 1 else None
        before = {group.name: group for group in group_states(previous)} if previous else {}
        changes = [
            {"group": group.name, "state": [was.state, group.state],
             "batchnorm": [list(was.batchnorm), list(group.batchnorm)],
             "learning_rates": [list(was.learning_rates), list(group.learning_rates)]}
            for group in group_states(plan) if (was := before.get(group.name)) and _change(was, group)
        ]
        phases.append({
            "number": number,
            "name": plan.phase.name,
            "epochs": plan.epochs,
            "steps": plan.steps,
            "learning_rate": plan.learning_rate,
            "transition": plan.transition(),
            "caches_features": phase.cache is not None,
            "feature_cache_blocker": phase.cache_blocker,
            "feature_cache_cut": phase.cache.cut if phase.cache else None,
            "cached_bytes_per_example": phase.cache.bytes_per_example if phase.cache else None,
            "trainable_layers": sum(state.trainable for state in plan.layers),
            "trainable_params": plan.trainable_params,
            "frozen_params": plan.frozen_params,
            "groups": [_group_dict(group) for group in group_states(plan)],
            "changes": changes,
            "layers": [_layer_dict(state) for state in plan.layers],
        })
    return {**(context or {}), "phases": phases}
