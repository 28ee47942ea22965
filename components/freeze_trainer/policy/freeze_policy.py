"""The freeze policy: a versioned, validated description of what trains and what stays frozen.

A policy is data. It is parsed from JSON or YAML into typed pydantic models that reject unknown
keys, so a typo fails at parse time rather than silently training the wrong layers. Resolving the
selectors against a concrete model happens in `freeze_plan.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
import re
import sre_constants
import sre_parse
from typing import Annotated, Literal

import pydantic
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveInt, model_validator

from freeze_trainer.policy.validation import DocumentError, first_error

# Bounds that keep a policy document cheap to read: a YAML alias bomb or deep nesting fails fast.
MAX_POLICY_BYTES = 64 * 1024
MAX_POLICY_DEPTH = 32
MAX_YAML_ALIASES = 64
# A learning rate the trainer can use: finite, and neither vanishing nor exploding.
MIN_LEARNING_RATE, MAX_LEARNING_RATE = 1e-8, 10.0
LearningRate = Annotated[float, Field(ge=MIN_LEARNING_RATE, le=MAX_LEARNING_RATE, allow_inf_nan=False)]
Multiplier = Annotated[float, Field(gt=0.0, le=1e4, allow_inf_nan=False)]
# Python's `re` backtracks: a quantifier inside a quantifier (`(\w*)*z`) or an alternation under one takes
# exponential time on a layer name it does not match, and every repeating quantifier more multiplies the
# work by the name's length. Policies are refused such patterns (google-re2 would match them in linear time,
# but it is a compiled dependency that changes the regex dialect); selectors rarely need more than two.
MAX_REGEX_LENGTH = 256
MAX_REPEATS = 3
_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT)


def _repeat_refusal(items, inside_repeat: bool, counts: list[int]) -> str | None:
    """Why a parsed pattern may backtrack super-linearly, walking its items; `counts[0]` sums the
    repeating quantifiers seen (`?` does not repeat)."""
    for op, av in items:
        if op in _REPEATS:
            _, high, body = av
            if inside_repeat:  # `(a?){25}` backtracks as `(a*)*` does
                return "nests a quantifier inside a quantifier (as `(\\w*)*`)"
            repeats = high > 1
            counts[0] += repeats
            reason = _repeat_refusal(body, repeats, counts)
        elif op is sre_constants.BRANCH:
            if inside_repeat:
                return "repeats an alternation (as `(a|ab)*`)"
            reason = next(filter(None, (_repeat_refusal(branch, inside_repeat, counts) for branch in av[1])), None)
        elif op is sre_constants.SUBPATTERN:
            reason = _repeat_refusal(av[-1], inside_repeat, counts)
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            reason = _repeat_refusal(av[1], inside_repeat, counts)
        else:
            continue
        if reason:
            return reason
    return None


def regex_refusal(pattern: str) -> str | None:
    """Why a selector's or block_pattern's regular expression is refused (invalid, too long, or one that
    may backtrack for seconds on a layer name), or None."""
    if len(pattern) > MAX_REGEX_LENGTH:
        return f"regular expression longer than {MAX_REGEX_LENGTH} characters"
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, OverflowError, RecursionError) as err:
        return f"invalid regular expression {pattern!r}: {err}"
    counts = [0]
    reason = _repeat_refusal(parsed, False, counts)
    if reason is None and counts[0] > MAX_REPEATS:
        reason = f"has {counts[0]} repeating quantifiers (at most {MAX_REPEATS})"
    if reason:
        return (f"regular expression {pattern!r} {reason}, which can backtrack for seconds on a layer name; "
                "use a simpler pattern, a glob or names")
    return None


def _linear_regex(pattern: str | None) -> str | None:
    if pattern is not None and (reason := regex_refusal(pattern)):
        raise ValueError(reason)
    return pattern


LinearRegex = Annotated[str, AfterValidator(_linear_regex)]


def length_text(epochs: int | None, steps: int | None) -> str:
    """A length as every report words it: "4 epochs", "1 epoch" or "250 steps" (steps win when set)."""
    count, unit = (steps, "step") if steps else (epochs, "epoch")
    return f"{count} {unit}{'s' if count != 1 else ''}"


class PolicyError(DocumentError):
    """An invalid freeze policy. `key` is the dotted path of the offending entry."""

    document = "freeze policy"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Selector(_Strict):
    """Chooses layers of the model. Exactly one field is set."""

    base: Literal[True] | None = Field(None, description="Every layer of the pretrained backbone.")
    names: list[str] | None = Field(None, min_length=1, description="Exact layer names.")
    glob: str | None = Field(None, description="A shell-style pattern over layer names.")
    regex: LinearRegex | None = Field(None, description="A regular expression matched against the whole layer name.")
    top: PositiveInt | None = Field(None, description="The last N layers of the backbone.")
    top_fraction: float | None = Field(None, gt=0.0, le=1.0, description="The last fraction of the backbone's layers.")
    bottom_fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="The first fraction of the backbone's layers, e.g. 0.8."
    )
    indices: str | None = Field(
        None, pattern=r"^-?\d*:-?\d*$", description="A Python slice over the backbone's layers, e.g. `-20:` or `10:-5`."
    )
    layer_class: str | None = Field(None, description="Layers of this Keras class, e.g. BatchNormalization.")
    group: str | None = Field(
        None,
        min_length=1,
        description="A named group: the backbone's blocks (`block_16` for MobileNetV2, `conv4` for ResNet50, ...),"
        " `stem`, `top`, `head`, or `auto_<i>` from the policy's `auto_groups` (0 is the bottom).",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Selector:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            options = ", ".join(type(self).model_fields)
            raise ValueError(f"a selector sets exactly one of {options}; got {chosen or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)


class Rule(_Strict):
    """`{"freeze": <selector>}` or `{"unfreeze": <selector>}`; later rules override earlier ones."""

    freeze: Selector | None = None
    unfreeze: Selector | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Rule:
        if (self.freeze is None) == (self.unfreeze is None):
            raise ValueError('a rule is either {"freeze": selector} or {"unfreeze": selector}')
        return self

    @property
    def trainable(self) -> bool:
        return self.unfreeze is not None

    @property
    def selector(self) -> Selector:
        return self.unfreeze if self.unfreeze is not None else self.freeze  # type: ignore[return-value]


_FREEZE_BASE = Rule(freeze=Selector(base=True))


class LearningRateRule(_Strict):
    """Sets the learning rate of the layers `select` chooses: absolute (`lr`) or × the head's (`multiplier`)."""

    select: Selector
    lr: LearningRate | None = None
    multiplier: Multiplier | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> LearningRateRule:
        if (self.lr is None) == (self.multiplier is None):
            raise ValueError("a learning-rate rule sets exactly one of `lr` and `multiplier`")
        return self


class LearningRateDecay(_Strict):
    """Lower learning rates deeper in the backbone: each step down from the head divides by `factor`.

    `per: group` steps once per auto group (ULMFiT's discriminative rates, factor 2.6); `per: layer`
    steps once per weighted layer (layer-wise decay). A layer whose rate falls below `floor` is frozen.
    """

    factor: float = Field(..., gt=1.0)
    per: Literal["group", "layer"] = "group"
    floor: LearningRate | None = None


class Phase(_Strict):
    """A stretch of training with one freeze state. Each phase starts from an all-trainable model."""

    name: str = Field(..., min_length=1)
    epochs: PositiveInt | None = Field(None, description="Length in epochs; defaults to the trainer's `epochs`.")
    steps: PositiveInt | None = Field(None, description="Length in steps, instead of epochs.")
    learning_rate: LearningRate | None = Field(None, description="The head's rate; defaults to the trainer's.")
    rules: list[Rule] = Field(..., min_length=1)
    lr_decay: LearningRateDecay | None = None
    lr_rules: list[LearningRateRule] = Field(default_factory=list, description="Applied after `lr_decay`; last wins.")
    # The transition into the phase. Unset fields take the defaults below (they stay out of the canonical
    # JSON, so a policy that sets none of them keeps its hash).
    optimizer_state: Literal["keep", "reset", "reset_new"] | None = Field(
        None,
        description="Adam's moments and step counts at the phase start: `reset` (default) every variable's, a"
        " fresh Adam as the Keras guide's recompile; `reset_new`: only variables that did not train in the"
        " previous phase start fresh (Lightning's added parameter group); `keep` them all. Each variable's"
        " bias correction counts its own steps.",
    )
    warmup_steps: PositiveInt | None = Field(
        None, description="Newly trainable layers ramp linearly from 0 to their rate over this many steps."
    )
    warmup_epochs: PositiveInt | None = Field(None, description="The same ramp, measured in epochs of the phase.")
    warmup_ratio: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="Where the ramp starts, as a fraction of the layers' rate: 0 for the linear ramp unless set;"
        " with `warmup_growth`, 0.1 unless set.",
    )
    warmup_growth: float | None = Field(
        None, gt=1.0,
        description="Lightning's BackboneFinetuning instead of a linear ramp: newly trainable layers start at"
        " `warmup_ratio` × their rate and it grows × this factor every epoch until it reaches their rate.",
    )
    restore_best: bool | None = Field(
        None,
        description="End the phase with the trainable weights (and BatchNorm statistics it may change) of its"
        " epoch with the lowest validation loss, as EarlyStopping(restore_best_weights=True). Default false.",
    )

    @model_validator(mode="after")
    def _one_length(self) -> Phase:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("a phase is measured in `epochs` or in `steps`, not both")
        ramps = [key for key in ("warmup_steps", "warmup_epochs", "warmup_growth") if getattr(self, key) is not None]
        if len(ramps) > 1:
            raise ValueError(f"a warm-up sets one of `warmup_steps`, `warmup_epochs`, `warmup_growth`, not {ramps}")
        if self.warmup_ratio is not None and not ramps:
            raise ValueError("`warmup_ratio` needs `warmup_steps`, `warmup_epochs` or `warmup_growth`")
        if self.warmup_ratio == 0.0 and self.warmup_growth is not None:
            raise ValueError("a growing warm-up starts above 0: set `warmup_ratio` > 0")
        return self

    @property
    def optimizer_state_mode(self) -> str:
        return self.optimizer_state or "reset"

    @property
    def restores_best(self) -> bool:
        return bool(self.restore_best)

    @property
    def warmup(self) -> Warmup | None:
        """The phase's warm-up, or None."""
        if self.warmup_growth is not None:
            return Warmup(ratio=0.1 if self.warmup_ratio is None else self.warmup_ratio, growth=self.warmup_growth)
        if self.warmup_steps is None and self.warmup_epochs is None:
            return None
        return Warmup(steps=self.warmup_steps, epochs=self.warmup_epochs, ratio=self.warmup_ratio or 0.0)


@dataclass(frozen=True)
class Warmup:
    """A phase's warm-up of its newly trainable layers: a linear ramp from `ratio` × their rate to their rate
    over `steps` (or `epochs`), or with `growth`, `ratio` × their rate × `growth` per epoch until aligned."""

    steps: int | None = None
    epochs: int | None = None
    ratio: float = 0.0
    growth: float | None = None

    def ramp_steps(self, epoch_steps: int) -> int:
        """The linear ramp's length in steps, for a phase of `epoch_steps` steps an epoch (0 with `growth`)."""
        return 0 if self.growth else (self.steps or self.epochs * epoch_steps)

    def factor(self, step: int, epoch_steps: int) -> float:
        """The rate factor at the phase's `step`-th step (from 1): what LayerRateAdam computes in the graph."""
        if self.growth:
            return min(1.0, self.ratio * self.growth ** ((step - 1) // epoch_steps))
        return min(1.0, self.ratio + (1.0 - self.ratio) * step / self.ramp_steps(epoch_steps))

    def describe(self) -> str:
        if self.growth:
            return f"from {self.ratio:g} × their rate, × {self.growth:g} per epoch"
        return f"linearly from {self.ratio:g} × their rate over {length_text(self.epochs, self.steps)}"

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


class _SafeRecipe(_Strict):
    """A recipe's phases after the head restore their best epoch unless `restore_best: false`: fine-tuning
    then never ends with a higher validation loss than the head it started from."""

    restore_best: bool | None = Field(
        None, description="Whether the phases after the head end with their best epoch's weights. Default true."
    )

    @property
    def _restores_best(self) -> bool:
        return self.restore_best is not False


class HeadThenTop(_SafeRecipe):
    """The Keras transfer-learning guide and TFX's cifar10 example: train the head on a frozen base,
    then unfreeze the top of the base and fine-tune at a low learning rate."""

    head_epochs: PositiveInt
    finetune_epochs: PositiveInt
    top_layers: PositiveInt | None = None
    top_fraction: float | None = Field(None, gt=0.0, le=1.0)
    finetune_learning_rate: LearningRate

    @model_validator(mode="after")
    def _one_top(self) -> HeadThenTop:
        if (self.top_layers is None) == (self.top_fraction is None):
            raise ValueError("set exactly one of `top_layers` and `top_fraction`")
        return self

    def phases(self) -> list[Phase]:
        top = Selector(top=self.top_layers) if self.top_layers else Selector(top_fraction=self.top_fraction)
        return [
            Phase(name="head", epochs=self.head_epochs, rules=[_FREEZE_BASE]),
            Phase(
                name="finetune",
                epochs=self.finetune_epochs,
                learning_rate=self.finetune_learning_rate,
                rules=[_FREEZE_BASE, Rule(unfreeze=top)],
                restore_best=self._restores_best,
            ),
        ]


class BackboneAtEpoch(_SafeRecipe):
    """PyTorch Lightning's BackboneFinetuning: the head trains alone until `unfreeze_at_epoch`; then the
    whole backbone trains at `initial_ratio` × the head's rate, × `growth` each epoch, until aligned."""

    unfreeze_at_epoch: PositiveInt
    epochs: PositiveInt
    initial_ratio: float = Field(0.1, gt=0.0, le=1.0)
    growth: float = Field(1.5, ge=1.0)

    @model_validator(mode="after")
    def _after_start(self) -> BackboneAtEpoch:
        if self.epochs <= self.unfreeze_at_epoch:
            raise ValueError("`epochs` must exceed `unfreeze_at_epoch`, or the backbone never trains")
        return self

    def phases(self) -> list[Phase]:
        phases = [Phase(name="head", epochs=self.unfreeze_at_epoch, rules=[_FREEZE_BASE])]
        epoch = self.unfreeze_at_epoch
        while epoch < self.epochs:
            ratio = min(1.0, self.initial_ratio * self.growth ** (epoch - self.unfreeze_at_epoch))
            # Once aligned with the head the rate stops changing: the remaining epochs are one phase.
            length = 1 if ratio < 1.0 else self.epochs - epoch
            phases.append(
                Phase(
                    name=f"backbone_epoch_{epoch}" if ratio < 1.0 else "backbone_aligned",
                    epochs=length,
                    rules=[Rule(unfreeze=Selector(base=True))],
                    lr_rules=[LearningRateRule(select=Selector(base=True), multiplier=ratio)],
                    # As Lightning: the backbone joins the optimizer fresh, the head's state and then the
                    # backbone's carry over from phase to phase.
                    optimizer_state="reset_new",
                    restore_best=self._restores_best,
                )
            )
            epoch += length
        return phases


class Gradual(_SafeRecipe):
    """ULMFiT's gradual unfreezing: one more auto group from the top each phase, each lower group
    training at the rate of the one above divided by `factor`."""

    epochs_per_group: PositiveInt = 1
    factor: float = Field(2.6, gt=1.0)
    final_epochs: int = Field(0, ge=0, description="Extra epochs with every group unfrozen.")

    def phases(self, groups: int) -> list[Phase]:
        decay = LearningRateDecay(factor=self.factor, per="group")
        phases = [Phase(name="head", epochs=self.epochs_per_group, rules=[_FREEZE_BASE])]
        for count in range(1, groups + 1):
            opened = [Rule(unfreeze=Selector(group=f"auto_{groups - 1 - i}")) for i in range(count)]
            epochs = self.epochs_per_group + (self.final_epochs if count == groups else 0)
            # As fastai's freeze_to: a newly unfrozen group starts a fresh Adam, the others keep theirs.
            phases.append(Phase(name=f"top_{count}_groups", epochs=epochs, rules=[_FREEZE_BASE, *opened], lr_decay=decay,
                                optimizer_state="reset_new", restore_best=self._restores_best))
        return phases


class Recipe(_Strict):
    """A shortcut for a common multi-phase recipe; it expands to explicit phases (see `plan`)."""

    head_then_top: HeadThenTop | None = None
    backbone_at_epoch: BackboneAtEpoch | None = None
    gradual: Gradual | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Recipe:
        if sum(value is not None for value in (self.head_then_top, self.backbone_at_epoch, self.gradual)) != 1:
            raise ValueError("a recipe sets exactly one of head_then_top, backbone_at_epoch, gradual")
        return self


class FreezePolicy(_Strict):
    """The whole policy. `rules` is shorthand for a single phase named `train`."""

    version: Literal[1]
    batchnorm: Literal["frozen", "affine", "train"] = Field(
        "frozen",
        description=(
            "How BatchNorm layers that the rules leave trainable behave: `frozen` keeps them in inference"
            " mode with fixed statistics and affine weights; `affine` trains gamma/beta on fixed"
            " statistics; `train` updates everything. BatchNorm inside frozen layers never changes."
        ),
    )
    auto_groups: int = Field(4, ge=1, le=64, description="How many contiguous `auto_<i>` groups split the backbone.")
    block_pattern: LinearRegex | None = Field(
        None,
        min_length=1,
        description="A regular expression whose first capture group, matched at the start of a base layer's name,"
        " is the layer's block (group) — for a base this project does not know, e.g. `(encoder_\\d+)_`.",
    )
    rules: list[Rule] | None = Field(None, min_length=1)
    phases: list[Phase] | None = Field(None, min_length=1)
    recipe: Recipe | None = None

    @model_validator(mode="after")
    def _block_pattern_has_a_group(self) -> FreezePolicy:
        if self.block_pattern is not None:
            try:
                groups = re.compile(self.block_pattern).groups
            except re.error as err:
                raise ValueError(f"block_pattern: invalid regular expression: {err}") from None
            if groups < 1:
                raise ValueError("block_pattern: needs a capture group, e.g. `(block_\\d+)_`")
        return self

    @model_validator(mode="after")
    def _one_phase_definition(self) -> FreezePolicy:
        given = [key for key in ("rules", "phases", "recipe") if getattr(self, key) is not None]
        if len(given) > 1:
            raise ValueError(f"overlapping phase definitions: set only one of `rules`, `phases`, `recipe`, not {given}")
        if not given:
            raise ValueError("a policy sets exactly one of `rules` (a single phase), `phases` or `recipe`")
        if self.phases is not None:
            seen: set[str] = set()
            for phase in self.phases:
                if phase.name in seen:
                    raise ValueError(f"phase name {phase.name!r} is used twice")
                seen.add(phase.name)
        return self

    def resolved_phases(self) -> list[Phase]:
        """The explicit phases: `rules` is one phase named `train`, a recipe expands to its phases."""
        if self.phases is not None:
            return list(self.phases)
        if self.rules is not None:
            return [Phase(name="train", rules=self.rules)]
        recipe = self.recipe
        if recipe.gradual is not None:
            return recipe.gradual.phases(self.auto_groups)
        return (recipe.head_then_top or recipe.backbone_at_epoch).phases()

    def phase_key(self, index: int) -> str:
        """Where phase `index`'s rules live in the policy document, for error messages."""
        if self.phases is not None:
            return f"phases[{index}]."
        return "" if self.rules is not None else f"recipe(phase {index})."

    @property
    def bn_runs_in_inference_mode(self) -> bool:
        return self.batchnorm != "train"

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


FROZEN_BASE_POLICY = FreezePolicy(version=1, rules=[_FREEZE_BASE])


def read_policy_source(value: str, noun: str = "policy") -> str:
    """A command-line policy (or other `noun`) argument: the path of a JSON/YAML file, or the text inline. A
    one-line argument that reads as a path (a `/`, or a .json/.yaml/.yml ending) must be a readable file."""
    if os.path.isfile(value):
        if os.path.getsize(value) > MAX_POLICY_BYTES:
            raise PolicyError("", f"{noun} file {value}: larger than {MAX_POLICY_BYTES} bytes")
        with open(value) as f:
            return f.read()
    looks_like_path = "\n" not in value and not value.lstrip().startswith("{") and ": " not in value and (
        "/" in value or value.endswith((".json", ".yaml", ".yml")))
    if looks_like_path:
        reason = "is a directory" if os.path.isdir(value) else "is not a regular file" if os.path.exists(value) \
            else "does not exist"
        raise PolicyError("", f"{noun} file {value} {reason}")
    return value


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents nested deeper than MAX_POLICY_DEPTH or with more than
    MAX_YAML_ALIASES aliases, before composing them (an alias bomb expands in the composer's output)."""

    noun = "policy"

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise PolicyError("", f"the {self.noun} uses more than {MAX_YAML_ALIASES} YAML aliases")
        self._depth += 1
        if self._depth > MAX_POLICY_DEPTH:
            raise PolicyError("", f"the {self.noun} nests deeper than {MAX_POLICY_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _UniqueKeyLoader(_BoundedLoader):
    """Also refuses a mapping that repeats a key: YAML (as JSON) would keep the last value silently."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise PolicyError(str(key), f"repeated at line {key_node.start_mark.line + 1}; a key appears once")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _depth(value: object) -> int:
    """Nesting depth, breadth-first (no recursion however deep), each container once: YAML aliases share
    one object, which an expanding walk would visit once per reference."""
    depth, level, seen = 0, [value], set()
    while level:
        depth += 1
        containers = [node for node in level if isinstance(node, (dict, list)) and id(node) not in seen]
        seen.update(map(id, containers))
        level = [child for node in containers for child in (node.values() if isinstance(node, dict) else node)]
    return depth


def _yaml_where(err: yaml.YAMLError) -> str:
    """' at line L column C: problem', on one line."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None) or str(err)
    where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
    return f"{where}: {' '.join(str(problem).split())}"


def parse_policy(text: str) -> FreezePolicy:
    """Parses a policy from JSON or YAML text. Raises PolicyError, and only PolicyError. A key repeated in a
    mapping is refused: JSON's and YAML's loaders would keep one of the two definitions silently."""
    return policy_from_dict(load_document(text))


def _refuse_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """json.loads' object_pairs_hook: a JSON object that repeats a key is refused, as in YAML."""
    document = dict(pairs)
    if len(document) < len(pairs):
        repeated = next(key for index, (key, _) in enumerate(pairs) if key in dict(pairs[:index]))
        raise PolicyError(repeated, "repeated; a key appears once")
    return document


def load_document(text: str, noun: str = "policy") -> object:
    """The data of a JSON or YAML document within the policy's bounds (size, depth, aliases); `noun` names
    it in errors. A mapping that repeats a key is refused, naming the key. Raises PolicyError, and only that."""
    if not isinstance(text, str) or not text.strip():
        raise PolicyError("", f"the {noun} is empty")
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise PolicyError("", f"the {noun} is larger than {MAX_POLICY_BYTES} bytes")
    loader = type("Loader", (_UniqueKeyLoader,), {"noun": noun})
    try:
        # JSON is YAML, but JSON's own parser gives better positions for JSON's errors.
        data = json.loads(text, object_pairs_hook=_refuse_repeated_keys) \
            if text.lstrip().startswith("{") else yaml.load(text, Loader=loader)
    except json.JSONDecodeError as err:
        raise PolicyError("", f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise PolicyError("", f"the {noun} nests deeper than {MAX_POLICY_DEPTH} levels") from None
    except yaml.YAMLError as err:
        raise PolicyError("", f"malformed or unsafe YAML{_yaml_where(err)}") from None
    if _depth(data) > MAX_POLICY_DEPTH:
        raise PolicyError("", f"the {noun} nests deeper than {MAX_POLICY_DEPTH} levels")
    return data


def policy_from_dict(data: object) -> FreezePolicy:
    if not isinstance(data, dict):
        raise PolicyError("", f"the policy must be a mapping, got {type(data).__name__}")
    try:
        return FreezePolicy.model_validate(data)
    except pydantic.ValidationError as err:
        raise PolicyError(*first_error(err)) from None


def policy_json_schema() -> dict:
    """The published JSON Schema of the policy."""
    return FreezePolicy.model_json_schema()
