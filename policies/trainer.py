"""The one training loop for every policy (STYLE.md #3).

AdamW + linear warmup + cosine decay, gradient clipping, EMA weights for inference, bf16
autocast on GPU, HuggingFace ``accelerate`` (``accelerate launch -m policies.train ...`` runs
it on several GPUs unchanged), exact resume, periodic evaluation in simulation through the
``evaluate_policy`` hook with best-by-success checkpointing, tqdm and TensorBoard.

Run directory::

    runs/NAME/config.json   the resolved run config (policy + trainer + data)
    runs/NAME/last/         newest checkpoint + train_state/ (for --resume)
    runs/NAME/best/         the checkpoint with the best evaluation success so far
    runs/NAME/eval/         evaluation reports per step;  runs/NAME/tb/  TensorBoard scalars
    runs/NAME/training.png  loss, learning rate and evaluation success against the step

TensorBoard gets the loss (mean over the interval), the learning rate and the data-wait
fraction every ``tb_every`` steps (``log_every``, but at least ~200 points over a short run) and
each evaluation's success with its Wilson 95 % interval.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from data.dataset import WEIGHTINGS
from data.errors import UserError
from data.store import EVAL_SEED
from policies.checkpoint import checked_file, load_weights, replace_dir, save_policy
from policies.common.config import StrictConfig
from policies.common.policy import Policy
from policies.train_state import EMA, load_train_state, preserved_rng, save_train_state

log = logging.getLogger("handoff.train")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainConfig(StrictConfig):
    name: ClassVar[str] = "train"
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "beta1": (0.0, 1.0),
        "beta2": (0.0, 1.0),
        "min_lr_ratio": (0.0, 1.0),
        "ema_power": (0.0, 10.0),
        "ema_max_decay": (0.0, 1.0),
    }

    steps: int = 100_000
    batch_size: int = 64  # diffusion_policy and ACT both train with 64 (ACT: 8 on real data)
    lr: float = 1e-4  # diffusion_policy CNN; ACT uses 1e-5 on its large model
    weight_decay: float = 1e-6  # diffusion_policy; ACT 1e-4
    beta1: float = 0.95  # diffusion_policy AdamW betas (0.95, 0.999)
    beta2: float = 0.999
    warmup_steps: int = 500  # diffusion_policy lr_warmup_steps
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float = 10.0  # max global grad norm (ACT/lerobot 10); 0 disables
    ema: bool = True
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    eval_every: int = 0  # steps between evaluations in sim; 0 = only at the end
    eval_episodes: int = 20
    eval_workers: int = 1
    eval_seed: int = EVAL_SEED  # past the store's seeds (handoff-train moves it if not)
    save_every: int = 1000
    log_every: int = 50  # steps between TensorBoard points (more often on short runs)
    num_workers: int = 0  # DataLoader workers; state stores are read from memory
    seed: int = 0
    # train on episodes whose metadata says success (and on corrected ones: their takeovers
    # are expert actions whatever the outcome)
    successful_only: bool = True
    # how samples are drawn by step label (data/dataset.py WEIGHTINGS). interventions-only by
    # default: measured on can (README, "Learning from corrections"), fine-tuning on the same
    # corrected rollouts gave 59/100 with it against 35 with sirius and 31 with uniform; on a
    # store of demonstrations only it is uniform sampling, so plain behaviour cloning is unchanged
    weighting: str = "interventions-only"
    # intra-op threads (0: torch's default). On a small, shared CPU one thread is several times
    # faster than two fighting other processes (measured on the 2-core dev box under load).
    torch_threads: int = 0
    max_minutes: float = 0.0  # stop (save + evaluate) after this much training; 0: no limit

    def __post_init__(self) -> None:
        ones = ("steps", "batch_size", "save_every", "log_every", "eval_episodes", "eval_workers")
        zeros = ("warmup_steps", "eval_every", "num_workers", "grad_clip", "torch_threads")
        for key, least in [(k, 1) for k in ones] + [(k, 0) for k in (*zeros, "max_minutes")]:
            if getattr(self, key) < least:
                raise UserError(f"train config: {key} must be >= {least}")
        if self.lr <= 0:
            raise UserError("train config: lr must be positive")
        if self.weighting not in WEIGHTINGS:
            raise UserError(
                f"train config: weighting {self.weighting!r}: choose one of {', '.join(WEIGHTINGS)}"
            )
        self.check_limits()


def success_text(rate: float, ci: list[float] | None) -> str:
    """``0.86 [0.78, 0.91]``: a success rate and its 95 % interval, as a person reads them."""
    return f"{rate:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def summary_line(run_dir: Path, summary: dict[str, Any]) -> str:
    """The human line printed before the final JSON line of ``handoff-train``."""
    loss = summary.get("final_loss")
    text = (
        f"trained {summary['steps']} steps in {summary['wall_s'] / 60:.1f} min"
        f" ({summary['samples_per_s']:.0f} samples/s), final loss "
        + (f"{loss:.4g}" if loss is not None else "-")
    )
    evals = summary.get("evaluations") or []
    if evals:
        best = max(evals, key=lambda e: (e["success_rate"], e["step"]))
        text += (
            f"; success {success_text(best['success_rate'], best.get('success_ci95'))}"
            f" at step {best['step']} ({len(evals)} evaluation(s))"
        )
    where = run_dir / ("best" if evals else "last")
    return f"{text}; checkpoint {where}, curves {run_dir / 'training.png'}"


def tb_interval(log_every: int, steps: int) -> int:
    """Steps between TensorBoard points: ``log_every``, or closer so that a short run still
    draws ~200 points (a 200-step run logged every 50 steps was four points)."""
    return max(1, min(log_every, steps // 200))


def plot_training(run_dir: Path) -> Path | None:
    """``run_dir/training.png`` from the run's TensorBoard scalars (resumed runs included):
    loss (log scale) and learning rate against the step, and evaluation success with its 95 %
    interval when there was one. None when nothing was logged yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, float]] = {}
    for f in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:  # a later file (a resumed run) wins per step
            series.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    loss = sorted(series.get("train/loss", {}).items())
    if not loss:
        return None
    success = sorted(series.get("eval/success_rate", {}).items())
    fig, axes = plt.subplots(1, 2 if success else 1, figsize=(11 if success else 6, 3.6))
    ax = axes[0] if success else axes
    ax.plot(*zip(*loss), color="tab:blue", linewidth=1.2, label="loss")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (log scale)", color="tab:blue")
    ax.grid(alpha=0.3)
    lr = sorted(series.get("train/lr", {}).items())
    if lr:
        ax_lr = ax.twinx()
        ax_lr.plot(*zip(*lr), color="tab:orange", linewidth=1.0, label="learning rate")
        ax_lr.set_ylabel("learning rate", color="tab:orange")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set_title(f"{run_dir.name}: loss {loss[-1][1]:.4g} at step {loss[-1][0]}")
    if success:
        steps, rates = zip(*success)
        low = series.get("eval/success_ci95_low", {})
        high = series.get("eval/success_ci95_high", {})
        ax = axes[1]
        if all(s in low and s in high for s in steps):
            err = [[r - low[s] for s, r in success], [high[s] - r for s, r in success]]
            ax.errorbar(steps, rates, yerr=err, fmt="o-", color="tab:green", capsize=4)
        else:
            ax.plot(steps, rates, "o-", color="tab:green")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("success rate (95 % interval)")
        ax.set_title(f"evaluation: best {max(rates):.2f}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / "training.png"
    tmp = run_dir / ".training.png.partial"
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(out)
    return out


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warmup to 1, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EpochSampler(torch.utils.data.Sampler):
    """A fresh permutation per epoch from (seed, epoch), able to start mid-epoch for resume.

    With ``weights`` ((n,) sample probabilities: the dataset's weighting, data/dataset.py) an
    epoch is n draws with replacement from them instead, from the same (seed, epoch) stream.
    Deliberately no ``set_epoch``: accelerate's loader calls that with its own iteration count
    on every ``iter()``, which would undo the mid-epoch start.
    """

    def __init__(self, n: int, seed: int, weights: Any = None) -> None:
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        if self.weights is not None:  # numpy: torch.multinomial stops at 2**24 samples
            rng = np.random.default_rng(self.seed * 1_000_003 + self.epoch)
            order = rng.choice(self.n, self.n, p=self.weights / self.weights.sum())
            return iter(order[self.start :].tolist())
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[self.start :].tolist())

    def __len__(self) -> int:
        return self.n - self.start


class Trainer:
    def __init__(
        self,
        policy: Policy,
        dataset: Any,
        config: TrainConfig,
        run_dir: Path,
        *,
        device: str = "auto",
        task: str | None = None,
        run_meta: dict[str, Any] | None = None,
        objective: Any = None,
    ) -> None:
        """``objective``: a training objective other than the policy's own loss, e.g.
        policies/diffusion/distill.py's ConsistencyDistillation: attached to the policy (whose
        forward then returns its loss), stepped after each optimizer step, its
        ``state_module`` saved with the training state."""
        from accelerate import Accelerator

        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available; use --device cpu")
        cpu = device == "cpu" or not torch.cuda.is_available()
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.accelerator = Accelerator(cpu=cpu, mixed_precision="no" if cpu else "bf16")
        self.config = config
        self.run_dir = Path(run_dir)
        self.task = task
        self.run_meta = dict(run_meta or {})
        self.policy = policy
        self.dataset = dataset
        self.sampler = EpochSampler(len(dataset), config.seed, getattr(dataset, "weights", None))
        if len(dataset) < config.batch_size * self.accelerator.num_processes:
            raise UserError(
                f"the training data has {len(dataset)} samples, fewer than one batch "
                f"({config.batch_size}); lower --batch-size or collect more episodes"
            )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=self.sampler,
            num_workers=config.num_workers,
            collate_fn=getattr(dataset, "collate", None),  # SequenceDataset batches are stacked
            drop_last=True,
            pin_memory=not cpu,
            persistent_workers=False,
            # the loader's own generator: drawing worker seeds must not advance the global RNG
            # (it would make a resumed run draw different noise than an uninterrupted one)
            generator=torch.Generator().manual_seed(config.seed),
        )
        optimizer = torch.optim.AdamW(
            policy.parameters(),
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            weight_decay=config.weight_decay,
        )
        schedule = functools.partial(
            lr_factor, warmup=config.warmup_steps, total=config.steps, floor=config.min_lr_ratio
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            policy, optimizer, loader, scheduler
        )
        self.ema = EMA(policy, config.ema_power, config.ema_max_decay) if config.ema else None
        self.objective = objective
        if objective is not None:  # after the EMA copy: the copy holds no objective
            objective.attach(policy)
        self.step = 0
        self.best_success = -1.0
        self.history: list[dict[str, Any]] = []
        self._progress = False

    # ---- checkpoints ----------------------------------------------------------------------------

    @property
    def inference_policy(self) -> Policy:
        return self.ema.model if self.ema else self.accelerator.unwrap_model(self.model)

    def _meta(self) -> dict[str, Any]:
        return {
            **self.run_meta,
            "step": self.step,
            "task": self.task,
            "best_success": self.best_success,
            "evaluations": self.history,
        }

    def save(self) -> Path:
        """Write ``last/`` (inference weights + train_state for resume)."""
        last = self.run_dir / "last"
        if not self.accelerator.is_main_process:
            return last
        raw = self.accelerator.unwrap_model(self.model)
        tmp = save_policy(self.inference_policy, self.run_dir / ".last-tmp", self._meta())
        save_train_state(
            tmp / "train_state",
            raw,
            self.optimizer,
            self.scheduler,
            self.step,
            {
                "best_success": self.best_success,
                "history": self.history,
                "ema": self.ema.model.state_dict() is not None if self.ema else False,
            },
        )
        if self.ema:
            from safetensors.torch import save_file

            ema_sd = {
                k: v.detach().cpu().contiguous() for k, v in self.ema.model.state_dict().items()
            }
            save_file(ema_sd, str(tmp / "train_state" / "ema.safetensors"))
        if self.objective is not None:
            from safetensors.torch import save_file

            sd = self.objective.state_module.state_dict()
            sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
            save_file(sd, str(tmp / "train_state" / "objective.safetensors"))
        replace_dir(tmp, last)
        return last

    def resume(self) -> None:
        state_dir = self.run_dir / "last" / "train_state"
        if not state_dir.is_dir():
            raise UserError(f"{state_dir}: no training state to resume from")
        raw = self.accelerator.unwrap_model(self.model)
        doc = load_train_state(state_dir, raw, self.optimizer, self.scheduler)
        if self.ema:
            f = checked_file(state_dir.parent, "train_state/ema.safetensors")
            load_weights(self.ema.model, f, "the run's config.json")
        if self.objective is not None:
            f = checked_file(state_dir.parent, "train_state/objective.safetensors")
            load_weights(self.objective.state_module, f, "the run's config.json")
        self.step = int(doc["step"])
        self.best_success = float(doc.get("best_success", -1.0))
        self.history = list(doc.get("history", []))
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def _diverged(self, loss: float) -> str:
        """What to do after a NaN/inf loss, naming a checkpoint only if one was written."""
        last = self.run_dir / "last"
        lr = self.config.lr
        if (last / "train_state").is_dir():
            return (
                f"loss became {loss} at step {self.step}; stopped. The last good checkpoint is "
                f"{last}: lower lr (now {lr}), then --resume"
            )
        return (
            f"loss became {loss} at step {self.step}, before the first checkpoint; stopped, "
            f"nothing was saved. Lower lr (now {lr}) and train again"
        )

    # ---- evaluation -----------------------------------------------------------------------------

    def evaluate(self, last: Path) -> dict[str, Any] | None:
        if not self.task or not self.accelerator.is_main_process:
            return None
        import policies
        from data.registry import hook

        evaluate_policy = hook("evaluate_policy")
        c = self.config
        target = (
            self.inference_policy
            if c.eval_workers == 1
            else functools.partial(policies.load, str(last))
        )
        out = self.run_dir / "eval" / f"step_{self.step:07d}"
        with preserved_rng():
            result = evaluate_policy(
                target,
                self.task,
                c.eval_episodes,
                seed=c.eval_seed,
                workers=c.eval_workers,
                out_dir=out,
                progress=self._progress,
            )
        entry = {
            "step": self.step,
            "success_rate": round(result["success_rate"], 4),  # 4 digits: 1/10000 of a success
            "success_ci95": result.get("success_ci95"),
            "mean_length": result.get("mean_length"),
        }
        self.history.append(entry)
        if result["success_rate"] >= self.best_success:  # ties go to the later, longer-trained
            self.best_success = result["success_rate"]
            tmp = self.run_dir / ".best-tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            shutil.copytree(last, tmp, ignore=shutil.ignore_patterns("train_state"))
            meta = json.loads((tmp / "train_meta.json").read_text())
            meta.update(best_success=self.best_success, evaluations=self.history)
            (tmp / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            replace_dir(tmp, self.run_dir / "best")
        return entry

    # ---- the loop -------------------------------------------------------------------------------

    def train(self, progress: bool = True) -> dict[str, Any]:
        from tqdm import tqdm

        c, acc = self.config, self.accelerator
        self._progress = progress and acc.is_main_process
        writer = None
        if acc.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tb"))
        per_epoch = len(self.dataset) // (c.batch_size * acc.num_processes)
        bar = tqdm(
            total=c.steps,
            initial=self.step,
            disable=not (progress and acc.is_main_process),
            desc="train",
            dynamic_ncols=True,
        )
        wait = busy = 0.0
        last_loss = None
        every = tb_interval(c.log_every, c.steps)
        loss_sum, loss_n = 0.0, 0  # since the last TensorBoard point
        samples = 0
        self.model.train()
        t_start = time.perf_counter()
        stop_at = c.steps
        while self.step < stop_at:
            epoch, within = divmod(self.step, per_epoch)
            global_batch = c.batch_size * acc.num_processes
            self.sampler.set_position(epoch, within * global_batch)
            batches = iter(self.loader)
            t0 = time.perf_counter()
            for batch in batches:
                t1 = time.perf_counter()
                loss, info = self.model(batch)
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(self._diverged(float(loss.detach())))
                acc.backward(loss)
                if c.grad_clip > 0:
                    acc.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema:
                    self.ema.update(acc.unwrap_model(self.model), self.step)
                if self.objective is not None:  # e.g. the consistency target network
                    self.objective.after_step(acc.unwrap_model(self.model), self.step)
                self.step += 1
                last_loss = float(loss.detach())
                loss_sum, loss_n = loss_sum + last_loss, loss_n + 1
                samples += global_batch
                t2 = time.perf_counter()
                wait, busy = wait + (t1 - t0), busy + (t2 - t1)
                t0 = t2
                bar.update(1)
                if writer and self.step % every == 0:
                    writer.add_scalar("train/loss", loss_sum / loss_n, self.step)
                    loss_sum, loss_n = 0.0, 0
                    for k, v in info.items():
                        writer.add_scalar(f"train/{k}", v, self.step)
                    writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
                    writer.add_scalar(
                        "perf/data_wait_fraction", wait / max(1e-9, wait + busy), self.step
                    )
                    bar.set_postfix(loss=f"{last_loss:.4f}")
                out_of_time = c.max_minutes and time.perf_counter() - t_start > 60 * c.max_minutes
                if out_of_time and self.step < stop_at:
                    log.warning(
                        "time budget of %.1f min reached at step %d; stopping there",
                        c.max_minutes,
                        self.step,
                    )
                    stop_at = self.step
                done = self.step >= stop_at
                do_eval = self.task and ((c.eval_every and self.step % c.eval_every == 0) or done)
                if self.step % c.save_every == 0 or done or do_eval:
                    acc.wait_for_everyone()
                    last = self.save()
                    if do_eval:
                        entry = self.evaluate(last)
                        if entry and writer:
                            writer.add_scalar("eval/success_rate", entry["success_rate"], self.step)
                            if entry["success_ci95"]:
                                lo, hi = entry["success_ci95"]
                                writer.add_scalar("eval/success_ci95_low", lo, self.step)
                                writer.add_scalar("eval/success_ci95_high", hi, self.step)
                            writer.flush()
                            plot_training(self.run_dir)
                            bar.write(
                                f"step {self.step}: success "
                                f"{success_text(entry['success_rate'], entry['success_ci95'])}"
                            )
                        self.save()  # record the evaluation in last/
                    acc.wait_for_everyone()
                    self.model.train()
                    t0 = time.perf_counter()
                if done:
                    break
        bar.close()
        if writer:
            writer.close()
            plot_training(self.run_dir)
        elapsed = time.perf_counter() - t_start
        return {
            "steps": self.step,
            "final_loss": last_loss,
            "samples_per_s": round(samples / max(1e-9, wait + busy), 1),
            "data_wait_fraction": round(wait / max(1e-9, wait + busy), 4),
            "wall_s": round(elapsed, 1),
            "best_success": self.best_success if self.history else None,
            "evaluations": self.history,
        }
