"""The distillation training loop: what is trainable, LoRA adapters, early stopping on a slice.

Only the parts pruning disturbed are trained: every MoE block's router and its routed experts
(attention, norms, embeddings, shared experts stay frozen, so the healed model cannot drift
away from the teacher where pruning changed nothing). `mode="lora"` freezes the expert weights
too and trains low-rank adapters on them, which drops the optimizer state and gradients of the
expert matrices, the bulk of a MoE's parameters; the adapters are merged back at the end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from packager.distill_cache import TeacherCache, WindowTargets, same_length_groups, top_k_kl
from packager.errors import PackError

if TYPE_CHECKING:
    import torch

MODES = ("full", "lora")
_LAYER = re.compile(r"\blayers\.(\d+)\.")
# A held-out KL must improve by more than this (nats per token) to count: below it, a student
# that already matches the teacher would keep weights changed by float noise alone.
KL_FLOOR = 1e-6


class DistillError(PackError):
    """A distillation request that cannot be carried out; the message says which input."""


@dataclass(frozen=True)
class TrainSettings:
    """The loop's knobs, already validated by `packager.distill`."""

    steps: int
    lr: float
    temperature: float
    batch_windows: int
    eval_every: int
    patience: int
    min_improvement: float  # relative: a held-out KL must beat the best by this share
    grad_clip: float
    router_lr_scale: float  # router lr = lr * this


@dataclass(frozen=True)
class TrainOutcome:
    steps_run: int
    stopped_early: bool
    best_step: int  # 0: the student as handed in was never beaten
    initial_kl: float
    best_kl: float
    history: tuple[tuple[int, float, float | None], ...]  # (step, loss, held-out KL or None)


# --- what is trained -----------------------------------------------------------------------
def moe_blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Modules with a router (`gate` or `router`) and routed experts: calibration's rule."""
    from packager.calibrate import router_of

    return [(name, m) for name, m in model.named_modules()
            if router_of(m) is not None and _LAYER.search(name)]


def lora_adapter(shape: Sequence[int], rank: int, alpha: float,
                 generator: torch.Generator) -> torch.nn.Module:
    """Low-rank adapter for one weight: W -> W + (alpha / r) * B @ A over its last two axes.

    Leading axes (a fused expert tensor's expert axis) get one adapter each. B starts at zero,
    so training starts from the pruned student exactly. It is registered as a torch
    parametrization, so the family's own forward (however it indexes its expert tensors) needs
    no change. The class is built here so that importing this module does not import torch.
    """
    import torch

    class LoRADelta(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            *lead, n_out, n_in = shape
            r = min(rank, n_out, n_in)
            self.scale = alpha / r
            bound = 1.0 / math.sqrt(n_in)  # A like nn.Linear's default init; B zero
            a = (torch.rand(*lead, r, n_in, generator=generator) * 2 - 1) * bound
            self.a = torch.nn.Parameter(a)
            self.b = torch.nn.Parameter(torch.zeros(*lead, n_out, r))

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w + self.scale * torch.matmul(self.b, self.a)

    return LoRADelta()


@dataclass
class Trainable:
    """The parameters the optimizer updates, and the LoRA parametrizations to merge later."""

    params: dict[str, torch.nn.Parameter]
    adapted: list[tuple[torch.nn.Module, str]]
    routers: set[str]  # names in `params` that are router weights

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        import torch

        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[n])

    def merge(self) -> None:
        """Fold every adapter into its weight (W + scale * B @ A) and remove it."""
        from torch.nn.utils import parametrize

        for owner, name in self.adapted:
            parametrize.remove_parametrizations(owner, name, leave_parametrized=True)
        self.adapted.clear()


def select_trainable(model: torch.nn.Module, mode: str, rank: int,
                     generator: torch.Generator) -> Trainable:
    """Freeze everything, then open routers and experts (full) or routers and adapters (lora)."""
    from torch.nn.utils import parametrize

    blocks = moe_blocks(model)
    if not blocks:
        raise DistillError("the student has no MoE blocks (a module with a `gate` or `router` "
                           "and `experts`)")
    for p in model.parameters():
        p.requires_grad_(False)
    params: dict[str, torch.nn.Parameter] = {}
    adapted: list[tuple[torch.nn.Module, str]] = []
    routers: set[str] = set()
    from packager.calibrate import router_of

    for block_name, block in blocks:
        attr, router = router_of(block)  # type: ignore[misc]
        for n, p in router.named_parameters():  # type: ignore[attr-defined]
            params[f"{block_name}.{attr}.{n}"] = p.requires_grad_(True)
            routers.add(f"{block_name}.{attr}.{n}")
        for owner_name, owner in list(block.experts.named_modules()):
            for n, p in list(owner.named_parameters(recurse=False)):
                full = f"{block_name}.experts.{owner_name + '.' if owner_name else ''}{n}"
                if mode == "full":
                    params[full] = p.requires_grad_(True)
                elif p.ndim >= 2 and not n.endswith("bias"):  # expert biases (gpt-oss's
                    # are [experts, width]) stay frozen under LoRA
                    lora = lora_adapter(tuple(p.shape), rank, float(rank), generator)
                    parametrize.register_parametrization(owner, n, lora)
                    adapted.append((owner, n))
                    params[f"{full}.lora_a"] = lora.a
                    params[f"{full}.lora_b"] = lora.b
    return Trainable(params, adapted, routers)


# --- the loop ------------------------------------------------------------------------------
def window_order(n: int, generator: torch.Generator) -> Iterator[int]:
    """Endless window indices: a fresh seeded permutation per pass over the training windows."""
    import torch

    while True:
        yield from torch.randperm(n, generator=generator).tolist()


def _forward(model: torch.nn.Module, batch: Sequence[Sequence[int]]) -> torch.Tensor:
    """[sum of lengths, vocab] logits of a batch of equal-length windows."""
    import torch
    from torch.nn.utils import parametrize

    # `cached`: each adapted weight is built once per forward, not once per expert lookup.
    with parametrize.cached():
        logits = model(input_ids=torch.tensor([list(w) for w in batch]), use_cache=False).logits
    return logits.reshape(-1, logits.shape[-1])


def _group_kl(model: torch.nn.Module, windows: Sequence[Sequence[int]], group: Sequence[int],
              cache: TeacherCache, first: int, temperature: float) -> torch.Tensor:
    """Per-position KL of one group; window `i` has cache row `first + i`."""
    logits = _forward(model, [windows[i] for i in group])
    return top_k_kl(logits, WindowTargets.concat([cache.get(first + i) for i in group]),
                    temperature)


def heldout_kl(model: torch.nn.Module, windows: Sequence[Sequence[int]], cache: TeacherCache,
               first: int, temperature: float, batch: int) -> float:
    """Mean per-position KL on the held-out windows (cache rows `first`, `first + 1`, ...)."""
    import torch

    total, n = 0.0, 0
    with torch.no_grad():
        for group in same_length_groups(range(len(windows)), windows, batch):
            kl = _group_kl(model, windows, group, cache, first, temperature)
            total += float(kl.sum())
            n += kl.numel()
    return total / n


def train(
    model: torch.nn.Module,
    trainable: Trainable,
    train_windows: Sequence[Sequence[int]],
    val_windows: Sequence[Sequence[int]],
    cache: TeacherCache,
    settings: TrainSettings,
    generator: torch.Generator,
    on_step: Callable[[int, float, float | None], None],
) -> TrainOutcome:
    """AdamW on the trainable parameters, warm-up then cosine decay; the best weights (on the
    held-out slice, the student as given included) are left in the model."""
    import torch

    s = settings
    t2 = s.temperature**2
    routers = [p for n, p in trainable.params.items() if n in trainable.routers]
    rest = [p for n, p in trainable.params.items() if n not in trainable.routers]
    groups = [{"params": rest, "lr": s.lr}, {"params": routers, "lr": s.lr * s.router_lr_scale}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
    warmup = max(1, min(10, s.steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * i / s.steps)))
    val_first = len(train_windows)
    initial = best = heldout_kl(model, val_windows, cache, val_first, s.temperature,
                                s.batch_windows)
    best_state, best_step, bad, stopped = trainable.snapshot(), 0, 0, False
    history: list[tuple[int, float, float | None]] = []
    order = window_order(len(train_windows), generator)
    step = 0
    for step in range(1, s.steps + 1):
        opt.zero_grad(set_to_none=True)
        batch = [next(order) for _ in range(s.batch_windows)]
        n_pos = sum(len(train_windows[i]) for i in batch)
        loss_value = 0.0
        for group in same_length_groups(batch, train_windows, s.batch_windows):
            kl = _group_kl(model, train_windows, group, cache, 0, s.temperature)
            loss = kl.sum() * (t2 / n_pos)
            loss.backward()
            loss_value += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(list(trainable.params.values()), s.grad_clip)
        opt.step()
        sched.step()
        kl_now = None
        if step % s.eval_every == 0 or step == s.steps:
            kl_now = heldout_kl(model, val_windows, cache, val_first, s.temperature,
                                s.batch_windows)
            if kl_now < best - max(best * s.min_improvement, KL_FLOOR):
                best, best_state, best_step, bad = kl_now, trainable.snapshot(), step, 0
            else:
                bad += 1
        history.append((step, loss_value, kl_now))
        on_step(step, loss_value, kl_now)
        if bad >= s.patience:
            stopped = step < s.steps
            break
    trainable.restore(best_state)
    return TrainOutcome(step, stopped, best_step, initial, best, tuple(history))
