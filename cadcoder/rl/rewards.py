"""Rewards for RL from execution, computed only through the sandbox.

Two named rewards, both :class:`ExecutionReward`:

* ``"iou"`` (reference-based): ``iou_weight * IoU`` when the program executes to a valid solid, and
  ``-failure_penalty`` when it does not (syntax error, runtime error, timeout, crash, no or invalid solid).
  The IoU is :func:`cadcoder.geometry.score_task`'s under the named ``protocol`` (default ``"aligned"``; fast
  mesh-boolean IoU by default, exact booleans with ``fast=False``), the metric of :mod:`cadcoder.evaluation`.
  Defaults: 10 * IoU and -10, the reward of cadrille and CADEvolve.
* ``"render"`` (reference-free): ``render_weight * similarity`` on success, ``-failure_penalty`` on failure,
  where the similarity is render-and-compare's (:func:`cadcoder.image_metrics.image_similarity`) between the
  input image and a dataset-style render of the program's solid. It needs no programs in the data.

Each distinct program costs two sandbox jobs (see :mod:`cadcoder.clean_scoring`, shared with the metric): it
runs and hands over its solid as BREP, then a clean child scores that BREP, so monkeypatching inside a program
cannot change its score.

Any callable ``reward(programs, examples, sandbox) -> list[float | RewardResult]`` works in the loop as
well (a toy reward in tests, a learned critic...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from PIL import Image

from cadcoder.clean_scoring import run_to_brep, score_breps
from cadcoder.image_metrics import image_similarity
from cadcoder.sandbox import Sandbox, SandboxResult
from cadcoder.selection import scoring_render_size

__all__ = ["REWARDS", "RLExample", "RewardResult", "RewardFn", "ExecutionReward", "make_reward", "as_results"]

REWARDS: tuple[str, ...] = ("iou", "render")
REFERENCE_FAILED = "reference_failed"
"""Status of a program whose reference program fails: reward 0 for the whole group (no signal)."""


@dataclass
class RLExample:
    """One training image, with its reference program when the data has one."""

    image: Image.Image
    program: str | None = None
    key: str = ""


@dataclass
class RewardResult:
    """The reward of one program and what it is made of.

    Attributes:
        reward: the scalar the policy maximises.
        status: ``"ok"``, a sandbox failure reason, or ``"reference_failed"``.
        error: why it failed (the sandbox's detail); empty when ok.
        iou: IoU against the reference, when computed.
        similarity: render-and-compare similarity to the input image, when computed.
    """

    reward: float
    status: str = "ok"
    error: str = ""
    iou: float | None = None
    similarity: float | None = None

    @property
    def ok(self) -> bool:
        """True when the program executed to a valid solid that was scored."""
        return self.status == "ok"


RewardFn = Callable[[Sequence[str], Sequence[RLExample], Union[Sandbox, None]], Sequence[Union[float, RewardResult]]]
"""``reward(programs, examples, sandbox)``: one value per program; ``examples[i]`` is program i's input."""


@dataclass
class ExecutionReward:
    """The ``iou`` or ``render`` reward (see the module docstring); call it like any :data:`RewardFn`.

    Raises:
        ValueError: an unknown kind or protocol, a negative penalty or weight.
    """

    kind: str = "iou"
    failure_penalty: float = 10.0
    iou_weight: float = 10.0
    render_weight: float = 10.0
    protocol: str = "aligned"
    fast: bool = True
    log_iou: bool = True
    render_style: dict[str, Any] | None = None
    _references: dict[str, SandboxResult] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in REWARDS:
            raise ValueError(f"unknown reward {self.kind!r}; use one of {', '.join(REWARDS)}")
        if self.protocol not in ("aligned", "bbox", "mecagent"):
            raise ValueError(f"unknown IoU protocol {self.protocol!r}; use aligned, bbox or mecagent")
        if min(self.failure_penalty, self.iou_weight, self.render_weight) < 0:
            raise ValueError(
                "failure_penalty, iou_weight and render_weight must be >= 0 (a failure earns -failure_penalty); "
                f"got {self.failure_penalty}, {self.iou_weight}, {self.render_weight}"
            )

    @property
    def name(self) -> str:
        """The reward's name in logs and the model card."""
        return self.kind

    @property
    def _failure_reward(self) -> float:
        return -self.failure_penalty or 0.0  # 0.0, not -0.0, when there is no penalty

    def describe(self) -> str:
        """One line for logs and the model card."""
        if self.kind == "iou":
            how = "fast mesh-boolean" if self.fast else "exact"
            return (f"iou: {self.iou_weight:g} * IoU ({self.protocol} protocol, {how}) for a valid solid, "
                    f"{self._failure_reward:g} for a failure")  # fmt: skip
        return (f"render: {self.render_weight:g} * render-and-compare similarity to the input image for a valid "
                f"solid, {self._failure_reward:g} for a failure")  # fmt: skip

    def __call__(self, programs: Sequence[str], examples: Sequence[RLExample], sandbox: Sandbox | None) -> list[RewardResult]:
        """Run and score each program against its example; failures are results, never raised."""
        if sandbox is None:
            raise ValueError(f"the {self.kind!r} reward runs programs: pass an open cadcoder.sandbox.Sandbox")
        if len(programs) != len(examples):
            raise ValueError(f"got {len(programs)} programs but {len(examples)} examples; pass one example per program")
        references = self._reference_results(examples, sandbox)
        by_code = run_to_brep(sandbox, programs)
        results: list[RewardResult | None] = [None] * len(programs)
        requests: list[dict[str, Any]] = []
        slots: dict[tuple[str, int], list[int]] = {}  # (program, example) -> positions; each scores once
        for i, (program, example, ref) in enumerate(zip(programs, examples, references)):
            solid = by_code[program]
            if not solid.ok:
                results[i] = RewardResult(self._failure_reward, solid.status, solid.error)
            elif self.kind == "iou" and not (ref is not None and ref.ok):
                results[i] = RewardResult(0.0, REFERENCE_FAILED, f"reference program failed: {ref.status}: {ref.error}"
                                          if ref is not None else "no reference program")  # fmt: skip
            elif (program, id(example)) in slots:
                slots[program, id(example)].append(i)
            else:
                requests.append(self._score_kwargs(solid.value, example, ref))
                slots[program, id(example)] = [i]
        for positions, scored in zip(slots.values(), score_breps(sandbox, requests), strict=True):
            for i in positions:
                results[i] = self._result(scored, examples[i])
        return results  # type: ignore[return-value]

    def _reference_results(self, examples: Sequence[RLExample], sandbox: Sandbox) -> list[SandboxResult | None]:
        """Each example's reference solid (run once per distinct program and cached), or None without one."""
        if self.kind == "render" and not self.log_iou:
            return [None] * len(examples)
        todo = list(dict.fromkeys(ex.program for ex in examples if ex.program and ex.program not in self._references))
        self._references.update(run_to_brep(sandbox, todo))
        return [self._references.get(ex.program) if ex.program else None for ex in examples]

    def _score_kwargs(self, brep: bytes, example: RLExample, ref: SandboxResult | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"candidate_brep": brep, "protocol": self.protocol, "fast": bool(self.fast)}
        if ref is not None and ref.ok:
            kwargs["reference_brep"] = ref.value
        if self.kind == "render":
            kwargs.update(render_size=scoring_render_size(example.image), style=self.render_style)
        return kwargs

    def _result(self, scored: SandboxResult, example: RLExample) -> RewardResult:
        """The reward of a program from its :func:`cadcoder.clean_scoring.clean_result`."""
        if not scored.ok:
            return RewardResult(self._failure_reward, scored.status, scored.error)
        value = scored.value
        iou = value.get("iou")
        if self.kind == "iou":
            return RewardResult(self.iou_weight * float(iou), iou=float(iou))
        similarity = float(image_similarity(example.image, value["render"]))
        return RewardResult(self.render_weight * similarity, iou=iou, similarity=similarity)


def make_reward(name: str, **settings: Any) -> ExecutionReward:
    """The named reward (``"iou"`` or ``"render"``) with :class:`ExecutionReward` settings."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; use one of {', '.join(REWARDS)} (or pass a callable)")
    return ExecutionReward(kind=name, **settings)


def as_results(values: Sequence[float | RewardResult], count: int) -> list[RewardResult]:
    """A reward callable's output as :class:`RewardResult` items (plain numbers count as valid).

    Raises:
        ValueError: the callable returned the wrong number of values or a non-finite reward.
    """
    values = list(values)
    if len(values) != count:
        raise ValueError(f"the reward returned {len(values)} values for {count} programs; return one per program")
    out = [v if isinstance(v, RewardResult) else RewardResult(float(v)) for v in values]
    bad = [r.reward for r in out if r.reward != r.reward or abs(r.reward) == float("inf")]
    if bad:
        raise ValueError(f"the reward returned a non-finite value ({bad[0]}); return finite numbers")
    return out
