"""Renders phase plans as text: every layer's group, state, BatchNorm mode, learning rate and counts."""

from __future__ import annotations

from freeze_trainer.keras.freeze_plan import LayerState, PhasePlan

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
    new = len(plan.trainable_layers() - (previous.trainable_layers() if previous else set()))
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


def phase_summary(number: int, total: int, plan: PhasePlan, previous: PhasePlan | None = None) -> str:
    length = f"{plan.steps} steps" if plan.steps else f"{plan.epochs} epochs"
    trainable_layers = sum(state.trainable for state in plan.layers)
    cache = "head trains on cached base features" if plan.caches_features else f"no feature cache: {plan.feature_cache_blocker}"
    transition = transition_summary(plan, previous, number == 1)
    return (
        f"phase {number}/{total} {plan.phase.name!r}: {length}, head lr {plan.learning_rate:.3g}; "
        f"{trainable_layers} of {len(plan.layers)} layers trainable; "
        f"trainable params {plan.trainable_params:,}, frozen params {plan.frozen_params:,}; "
        f"{transition + '; ' if transition else ''}{cache}"
    )


def format_plan(plans: list[PhasePlan]) -> list[str]:
    header = _ROW.format(index="#", name="layer", cls="class", group="group", auto="auto", state="state", bn="bn",
                         lr="lr", train="trainable", frozen="frozen")
    lines = []
    for number, plan in enumerate(plans, start=1):
        lines.append(phase_summary(number, len(plans), plan, plans[number - 2] if number > 1 else None))
        lines.append(header)
        lines.extend(_row(index, state) for index, state in enumerate(plan.layers))
    return lines
