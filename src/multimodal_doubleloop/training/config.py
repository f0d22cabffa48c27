"""Training configuration: one dataclass, checked once at the boundary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..config import build
from .controller import ControllerConfig
from .finetune import frozen
from .precision import PRECISIONS

COMPONENTS = ("vision", "text", "fusion", "heads")  # MultimodalModel's parts, by name
OPTIMIZERS = ("adamw", "prodigy", "schedulefree_adamw", "dadapt_adam", "mechanic_adamw")


@dataclass
class TrainConfig:
    epochs: int = 6
    # adamw, or a learning-rate-free peer from the `study` extra (training/optim.py); for
    # prodigy, dadapt_adam and mechanic_adamw `lr` multiplies their own estimate (1.0)
    optimizer: str = "adamw"
    images_per_batch: int = 16  # image-major: all texts of these images form a batch
    texts_per_image: int = 0  # ... or this many of each image's texts, drawn anew each epoch (0 = all)
    grad_accum_steps: int = 1
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01  # cosine ends at lr * min_lr_ratio
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto = fp32 on CPU, bf16 (fp16 + GradScaler if no bf16) on CUDA
    num_workers: int = 0  # DataLoader workers; 0 = build batches in-process (in-memory images)
    checkpoint_dir: str = "data/06_models/checkpoints"  # one folder per configuration inside
    keep_configs: int = 3  # configuration folders kept (the newest; the running one always)
    checkpoint_every: int = 200  # optimiser steps between resume checkpoints; 0 = never
    keep_last: int = 2
    resume: bool = True  # continue from the newest checkpoint of this configuration
    max_steps: int = 0  # stop after this many optimiser steps (0 = run all epochs)
    log_every: int = 50
    # Validate on the first `eval_images` validation images (0 = all) every `eval_every`
    # optimiser steps (0 = at epoch ends only): `TrainState.val_log`, time to a target.
    eval_every: int = 0
    eval_images: int = 0
    progress_bar: bool = True
    group_lr: dict[str, float] = field(default_factory=dict)  # e.g. {"heads": 2.0}
    # Fine-tuning (training/finetune.py). `freeze`: component -> the step it unfreezes at
    # (`{vision: 500}`), or true for the whole run. `layer_decay` < 1: a tower's block i
    # of L trains at lr x layer_decay^(L - i), its embeddings at layer_decay^(L + 1).
    freeze: dict[str, int | bool] = field(default_factory=dict)
    layer_decay: float = 1.0
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    world_size: int = 1  # processes (one per GPU on CUDA); the global batch is images_per_batch * world_size
    compile: bool = False  # torch.compile the training step (CUDA; single process)
    # The outer loop (method fixed | hypergradient | double_loop); see training/controller/.
    controller: ControllerConfig = field(default_factory=ControllerConfig)

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if isinstance(self.controller, dict):
            self.controller = ControllerConfig.from_dict(self.controller)
        checks = {
            "epochs": self.epochs >= 1,
            "images_per_batch": self.images_per_batch >= 1,
            "texts_per_image": self.texts_per_image >= 0,
            "grad_accum_steps": self.grad_accum_steps >= 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "warmup_steps": self.warmup_steps >= 0,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "grad_clip": self.grad_clip >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "num_workers": self.num_workers >= 0,
            "checkpoint_every": self.checkpoint_every >= 0,
            "keep_last": self.keep_last >= 1,
            "keep_configs": self.keep_configs >= 1,
            "max_steps": self.max_steps >= 0,
            "max_bad_steps": self.max_bad_steps >= 1,
            "world_size": self.world_size >= 1,
            "eval_every": self.eval_every >= 0,
            "eval_images": self.eval_images >= 0,
            "layer_decay": 0 < self.layer_decay <= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                "out-of-range value(s) " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"training.precision={self.precision!r}: use one of {PRECISIONS}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"training.optimizer={self.optimizer!r}: use one of {OPTIMIZERS}")
        if self.optimizer != "adamw" and (
            self.controller.method != "fixed" or self.group_lr or self.layer_decay != 1
        ):
            raise ValueError(
                f"training.optimizer={self.optimizer!r} runs with training.controller.method: fixed, "
                "no training.group_lr and training.layer_decay: 1 (the outer loop reads AdamW's "
                "state, and Prodigy and D-Adaptation refuse groups with different learning rates)"
            )
        self._check_freeze()
        self._check_group_lr()

    def _check_group_lr(self) -> None:
        groups = (*COMPONENTS, "loss_weights")
        unknown = sorted(set(self.group_lr) - set(groups))
        if unknown:
            raise ValueError(f"training.group_lr: unknown group(s) {unknown}; use {list(groups)}")
        bad = {k: v for k, v in self.group_lr.items() if not (isinstance(v, int | float) and v > 0)}
        if bad:
            raise ValueError(f"training.group_lr: multipliers must be numbers > 0, got {bad}")

    def _check_freeze(self) -> None:
        unknown = sorted(set(self.freeze) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"training.freeze: unknown component(s) {unknown}; use {list(COMPONENTS)}")
        for name, until in self.freeze.items():
            if not isinstance(until, bool) and until < 0:
                raise ValueError(
                    f"training.freeze.{name}={until}: give the step it unfreezes at (>= 0) "
                    "or true to keep it frozen for the whole run"
                )
        if self.world_size > 1 and any(frozen(until, 0) for until in self.freeze.values()):
            raise ValueError(
                "training.freeze needs world_size: 1 (DistributedDataParallel fixes which "
                "parameters train when it wraps the model)"
            )

    @classmethod
    def from_dict(cls, params: dict) -> TrainConfig:
        """Unknown keys, wrong types and out-of-range values fail with their key path."""
        return build(cls, params, "training")

    def to_dict(self) -> dict:
        return asdict(self)
