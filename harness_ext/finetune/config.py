"""What a fine-tuning run is asked to do: `FinetuneConfig`, validated before any model is loaded.

Modes: `full` (every weight trains, pruned zeros held at zero), `lora` (peft adapters on the pruned linear
layers; merged into the weights through the base layers' masks), `qlora` (LoRA over a bitsandbytes 4-bit base;
CUDA only). Precisions: `fp32`, `bf16-amp` (bf16 autocast, fp32 master weights; CPU or CUDA), `fp16-amp` (fp16
autocast with a gradient scaler; CUDA only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UserError

MODES = ("full", "lora", "qlora")
PRECISIONS = ("fp32", "bf16-amp", "fp16-amp")
CUDA_ONLY = {"qlora": "QLoRA's 4-bit base (bitsandbytes)", "fp16-amp": "fp16 autocast with a gradient scaler"}
DEFAULT_LR = {"full": 2e-5, "lora": 3e-4, "qlora": 3e-4}  # peak learning rate per mode when none is given
# The settings a grid spec's `finetune:` block may give (the rest are per-run plumbing the runner sets).
GRID_KEYS = ("data", "mode", "precision", "epochs", "max_steps", "lr", "batch_size", "grad_accum", "limit",
             "eval_limit", "max_length", "lora_r", "lora_alpha", "seed")


@dataclass(frozen=True)
class FinetuneConfig:
    """One run's settings. `max_steps` (optimizer steps) wins over `epochs` when given; `lr` is the peak
    learning rate (linear decay); `batch_size` is per optimizer micro-step, `grad_accum` micro-steps make one
    step (None: `DEFAULT_LR` of the mode); `limit` keeps the first N training examples; `max_length` cuts examples to N tokens; `keep_masks`
    False is for control runs only (pruned weights may then revive; the CLI always keeps them)."""

    data: str = "mrpc"
    mode: str = "full"
    precision: str = "fp32"
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    seed: int = 0
    limit: int | None = None
    eval_limit: int | None = None
    max_length: int = 512
    lora_r: int = 16
    lora_alpha: int = 32
    save_steps: int = 200
    save_format: str = "dense"
    require_sparse: bool = False
    keep_masks: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.lr is None and self.mode in DEFAULT_LR:
            object.__setattr__(self, "lr", DEFAULT_LR[self.mode])

    def validate(self, cuda_available: bool) -> None:
        """UserError naming the first bad setting (before anything is loaded or written)."""
        if self.mode not in MODES:
            raise UserError(f"unknown fine-tuning mode {self.mode!r}; use one of: {', '.join(MODES)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; use one of: {', '.join(PRECISIONS)}")
        for option in (self.mode, self.precision):
            if option in CUDA_ONLY and not (cuda_available and self.device.startswith("cuda")):
                raise UserError(f"{option} needs a CUDA GPU ({CUDA_ONLY[option]}) and this run has none "
                                f"(device={self.device}); use --mode lora / --precision bf16-amp on the CPU")
        if self.max_steps is not None and self.max_steps <= 0:
            raise UserError(f"--max-steps must be > 0, got {self.max_steps}; give a positive number of steps")
        if not self.epochs > 0:
            raise UserError(f"--epochs must be > 0, got {self.epochs}; give a positive number (1 = one pass)")
        for name in ("batch_size", "grad_accum", "max_length", "lora_r", "lora_alpha", "save_steps", "limit",
                     "eval_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}; give a positive integer "
                                "or leave it out for the default")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}; give a learning rate such as 2e-5")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
