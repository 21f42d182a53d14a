"""``run_trial``: train, pick the best dev epoch, report its test metric; divergence is a result."""

from __future__ import annotations

import itertools
import math
import statistics
import time
from typing import Callable, Iterable, Iterator

import torch

from rmask_tune.tasks.results import ExampleLog
from rmask_tune.trainer.config import TrialConfig
from rmask_tune.trainer.output import PeakMemory, check_output_dir, write_outputs
from rmask_tune.trainer.trial import Trial, prepare_trial, resolve_device

# The divergence threshold is factor x max(first loss, this): a first loss near zero is not a baseline.
DIVERGENCE_FLOOR = 0.01
# Weight of the history in the smoothed loss that the divergence test watches.
SMOOTHING = 0.9

Hook = Callable[[dict], None]


class DivergenceMonitor:
    """Flags a non-finite loss, or a smoothed loss above ``factor`` x the first loss."""

    def __init__(self, factor: float):
        self.factor = factor
        self.initial: float | None = None
        self.smoothed: float | None = None

    def diverged(self, loss: float) -> bool:
        """Take one loss; True when training has diverged."""
        if not math.isfinite(loss):
            return True
        if self.initial is None:
            self.initial = self.smoothed = loss
            return False
        self.smoothed = SMOOTHING * self.smoothed + (1 - SMOOTHING) * loss
        return self.smoothed > self.factor * max(self.initial, DIVERGENCE_FLOOR)


def run_trial(
    config: TrialConfig | dict, hooks: Iterable[Hook] = (), output_dir=None, *, overwrite: bool = False
) -> dict:
    """Run one trial and return its result (also written to ``output_dir``/metrics.json when given).

    Each hook gets one record per epoch; the last one carries ``final: True`` and the test metric.
    Every record a hook gets also carries ``examples``: the trial's per-example results so far (an
    ``ExampleLog``, written to ``output_dir``/examples.json). An ``output_dir`` that already holds
    files is refused unless ``overwrite``.
    """
    config = TrialConfig.coerce(config)
    output = check_output_dir(output_dir, overwrite)
    started = time.perf_counter()
    memory = PeakMemory(resolve_device(config.device))
    trial = prepare_trial(config)
    run = TrialRun(trial, list(hooks), started, memory)
    result = run.run()
    if output is not None:
        write_outputs(trial, result, output, run.examples)
    return result


def train_trial(trial: Trial, hooks: Iterable[Hook] = ()) -> dict:
    """Train a prepared trial and return its result; the model is left in its best dev epoch's state."""
    return TrialRun(trial, list(hooks), time.perf_counter(), PeakMemory(trial.device.type)).run()


class TrialRun:
    """The epochs of one trial: training, dev evaluation, model selection and the hooks' records."""

    def __init__(self, trial: Trial, hooks: list[Hook], started: float, memory: PeakMemory):
        self.trial = trial
        self.config = trial.config
        self.hooks = hooks
        self.started = started
        self.memory = memory
        self.records: list[dict] = []
        self.step_times: list[float] = []
        self.best_epoch: int | None = None
        self.best_dev: dict | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.diverged = False
        self.step = 0  # optimizer steps so far
        self.scheduled_lr: float | None = None  # the learning rate the schedule set for the next step
        task = trial.task
        self.examples = ExampleLog(task.name, task.metric, task.scorer.name)  # per-example results

    def run(self) -> dict:
        """Train (or, for method ``none``, only evaluate), then test the best state; the result."""
        if self.config.method == "none":
            self.end_epoch(1, None, [], self.evaluate("dev", 1), last=True)
        else:
            self.train()
        test = self.finish()
        return self.result(test)

    def train(self) -> None:
        """Epochs of training, each followed by a dev evaluation, until the last epoch or a divergence."""
        from tqdm.auto import tqdm

        trial, config = self.trial, self.config
        trainable = [p for p in trial.model.parameters() if p.requires_grad]
        steps = config.optimizer_steps(len(trial.items["train"]))
        optimizer, scheduler = make_optimizer(config, parameter_groups(trial), steps)
        optimizer = trial.accelerator.prepare(optimizer)
        scaler = trial.precision.grad_scaler(trial.device.type)
        generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)  # dropout
        monitor = DivergenceMonitor(config.divergence_factor)
        rounds = self.rounds(generator)
        for epoch in tqdm(range(1, config.epochs + 1), desc="epochs", disable=config.quiet):
            losses, times = self.train_epoch(epoch, next(rounds), optimizer, scaler, scheduler, monitor)
            self.diverged = self.diverged or not all(bool(torch.isfinite(p).all()) for p in trainable)
            self.step_times += times
            train_loss = statistics.fmean(losses) if losses and all(map(math.isfinite, losses)) else None
            if self.diverged:
                self.end_epoch(epoch, train_loss, times, None, last=True)
                return
            self.end_epoch(epoch, train_loss, times, self.evaluate("dev", epoch), last=epoch == config.epochs)

    def rounds(self, generator: torch.Generator) -> Iterator[list[list]]:
        """The training batches of each epoch: one pass over the data shuffled by ``generator``; with
        ``max_steps``, that many optimizer steps' batches split into ``epochs`` evaluation rounds (the data
        reshuffled on every pass; see TrialConfig)."""
        trial, config = self.trial, self.config
        if config.max_steps is None:
            for _ in range(config.epochs):
                yield list(trial.train_batches(generator))
            return
        stream = itertools.chain.from_iterable(trial.train_batches(generator) for _ in itertools.count())
        ends = [round(k * config.max_steps / config.epochs) for k in range(1, config.epochs + 1)]
        for start, end in zip([0, *ends], ends):
            yield list(itertools.islice(stream, (end - start) * config.grad_accum))

    def train_epoch(self, epoch, batches, optimizer, scaler, scheduler, monitor) -> tuple[list[float], list[float]]:
        """One epoch's training ``batches`` (from ``rounds``); the losses and the optimizer steps' durations.

        ``scaler`` is the precision policy's loss scaler (a pass-through except for fp16, where a step whose
        gradients overflowed is skipped and the scale lowered).
        """
        from tqdm.auto import tqdm

        trial, accum = self.trial, self.config.grad_accum
        trial.model.train()
        losses, times = [], []
        tick = time.perf_counter()
        with tqdm(total=len(batches), desc=f"epoch {epoch}", leave=False, disable=self.config.quiet) as bar:
            for index, batch in enumerate(batches):
                loss = trial.loss(batch)
                losses.append(loss.item())
                if monitor.diverged(losses[-1]):
                    self.diverged = True
                    break
                group_start = index - index % accum
                group = min(accum, len(batches) - group_start)  # the last group may be short
                scaler.scale(loss / group).backward()
                if index + 1 == group_start + group:
                    scaler.step(optimizer)
                    scaler.update()
                    self.step += 1
                    if trial.setup.on_step_end is not None:
                        trial.setup.on_step_end(self.step)
                    scheduler.step()
                    self.scheduled_lr = scheduler.get_last_lr()[0]
                    optimizer.zero_grad()
                    times.append(elapsed_since(tick, trial.device))
                    tick = time.perf_counter()
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        return losses, times

    def end_epoch(self, epoch: int, train_loss, times: list[float], dev: dict | None, last: bool) -> None:
        """Record the epoch (a diverged one keeps the last good dev metrics); keep the best state.

        Every record but the last goes to the hooks now; the last one after the test (``finish``).
        """
        if dev is not None and (self.best_dev is None or self.metric(dev) > self.metric(self.best_dev)):
            self.best_epoch, self.best_dev = epoch, dev
            self.best_state = snapshot(self.trial.model)
        shown = dev if dev is not None else (self.records[-1]["dev_metrics"] if self.records else None)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "extra_loss": self.trial.take_extra_loss(),  # the method's share of train_loss (AdaLoRA's regularizer)
            "dev_metric": self.metric(shown),
            "dev_metrics": shown,
            "diverged": self.diverged,
            "step_time_s": statistics.median(times) if times else None,
            "scheduled_lr": self.scheduled_lr,
            "elapsed_s": time.perf_counter() - self.started,
            "trainable_params": self.trial.trainable_params,
            "total_params": self.trial.setup.total_params,
            "precision": self.trial.precision.name,
            "budget_steps": self.config.optimizer_steps(len(self.trial.items["train"])),  # planned: the budget
        }
        self.records.append(record)
        if not last:
            self.report(record)

    def finish(self) -> dict | None:
        """Restore the best state, evaluate the test split once, and report the final record."""
        test = None
        if self.best_state is not None:
            restore(self.trial.model, self.best_state)
            test = self.evaluate("test", self.best_epoch)
        last = self.records[-1]
        last.update(
            final=True,
            test_metric=self.metric(test),
            test_metrics=test,
            best_epoch=self.best_epoch,
            best_dev_metric=self.metric(self.best_dev),
            peak_mem_bytes=self.memory.peak(),
        )
        self.report(last)
        return test

    def evaluate(self, split: str, epoch: int) -> dict[str, float]:
        """The metrics of ``split`` in the model's current state (that of ``epoch``); its per-example
        results join ``examples``."""
        metrics, columns = self.trial.evaluate_examples(split)
        self.examples.add(split, epoch, [ex.uid for ex in getattr(self.trial.splits, split)], columns)
        return metrics

    def report(self, record: dict) -> None:
        for hook in self.hooks:
            hook({**record, "examples": self.examples})

    def metric(self, metrics: dict | None) -> float | None:
        """The task's primary metric in ``metrics``."""
        return None if metrics is None else metrics[self.trial.task.metric]

    def result(self, test: dict | None) -> dict:
        """The trial's result (metrics.json)."""
        trial, config, last = self.trial, self.config, self.records[-1]
        return {
            "model": config.model,
            "task": trial.task.name,
            "method": config.method,
            "ratio": config.ratio,
            "density": config.density,
            "lr": config.lr,
            "seed": config.seed,
            "trainable_params": last["trainable_params"],
            "total_params": last["total_params"],
            "trainable_fraction": last["trainable_params"] / last["total_params"],
            "head_params": trial.trainable_params - trial.setup.trainable_params,
            "metric": trial.task.metric,
            "epochs": self.records,
            "best_epoch": self.best_epoch,
            "dev_metric": self.metric(self.best_dev),
            "test_metric": self.metric(test),
            "test_metrics": test,
            "diverged": self.diverged,
            "status": "diverged" if self.diverged else "finished",
            "step_time_s": statistics.median(self.step_times) if self.step_times else None,
            "optimizer_steps": self.step,
            "peak_mem_bytes": last["peak_mem_bytes"],
            "peak_mem_kind": self.memory.kind,
            "device": str(trial.device),
            "precision": {**trial.precision.to_dict(), "param_dtypes": trial.param_dtypes},
            "method_details": trial.setup.details,
            "data": {
                **trial.splits.meta,
                "sizes": {name: len(getattr(trial.splits, name)) for name in ("train", "dev", "test")},
                "seed": config.effective_data_seed,
            },
            "notes": trial.notes,
            "config": config.to_dict(),
            "wall_time_s": time.perf_counter() - self.started,
        }


def parameter_groups(trial: Trial) -> list:
    """The trainable parameters; with ``head_lr``, the trained classification head (the trainer's or peft's
    ``modules_to_save`` copy) in a group of its own at that learning rate."""
    from rmask_tune.trainer.classifiers import HEAD_NAMES

    named = [(name, p) for name, p in trial.model.named_parameters() if p.requires_grad]
    if trial.config.head_lr is None:
        return [p for _, p in named]
    in_head = [any(part in HEAD_NAMES for part in name.split(".")) for name, _ in named]
    groups = [{"params": [p for (_, p), h in zip(named, in_head) if not h]},
              {"params": [p for (_, p), h in zip(named, in_head) if h], "lr": trial.config.head_lr}]
    return [g for g in groups if g["params"]]


def make_optimizer(config: TrialConfig, params: list, total_steps: int):
    """The config's optimizer over ``params`` and the learning-rate schedule over ``total_steps``."""
    from transformers import get_scheduler

    from rmask_tune.errors import RmaskError

    if not params:
        raise RmaskError(f"method '{config.method}' left nothing trainable")
    optimizer = build_optimizer(config.optimizer, params, config.lr, config.weight_decay)
    warmup = round(config.warmup_ratio * total_steps)
    name = "constant_with_warmup" if config.schedule == "constant" and warmup else config.schedule
    return optimizer, get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def build_optimizer(name: str, params: list, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """One of ``config.OPTIMIZERS`` at a fixed ``lr``."""
    if name.startswith("adamw"):
        implementation = {"adamw_foreach": {"foreach": True}, "adamw_fused": {"fused": True}}.get(name, {})
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, **implementation)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    from transformers.optimization import Adafactor

    return Adafactor(
        params, lr=lr, weight_decay=weight_decay, scale_parameter=False, relative_step=False, warmup_init=False
    )


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable tensors (small for PEFT methods)."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def restore(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a snapshot of trainable tensors back."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def elapsed_since(tick: float, device: torch.device) -> float:
    """Seconds since ``tick``, after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tick
