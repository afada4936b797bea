"""Write configs/pretrain/<arch>.yaml for the 32 ReIDZoo models (run: python configs/pretrain/generate.py).

The paper's Table 5 (batch size and local crops per model) is not in its text; the only stated
figure is ResNet50-IBN at 120 images per V100 with 8 local crops. The rule below sizes the
other models by backbone parameters for 8 GPUs of 32 GB, the paper's setting, and keeps the
DINO learning-rate scaling ``lr = base_lr * global_batch / 256``. Adjust ``batch_size`` to your
GPUs: the lr follows it automatically.
"""
from __future__ import annotations

from pathlib import Path

GPUS = 8


def per_gpu(params: float, cnn: bool) -> tuple[int, int]:
    """(images per GPU, local crops) by backbone size in millions of parameters."""
    m = params / 1e6
    if m < 10:
        return 192, 8
    if m < 30:
        return (120 if cnn else 96), 8
    if m < 60:
        return 64, 6
    return 48, 6


def main() -> None:
    from cion.models import list_models, model_info

    out = Path(__file__).parent
    for name in list_models():
        info = model_info(name)
        b, locals_ = per_gpu(info["params"], info["channels_last"])
        if name == "resnet50_ibn":
            b, locals_ = 120, 8  # the paper's stated setting
        batch = b * GPUS
        lr = 5e-4 * batch / 256
        text = f"""# CION pre-training recipe for {name} ({info['family']}, {info['params'] / 1e6:.1f} M params, D = {info['feature_dim']}).
# Written by configs/pretrain/generate.py for {GPUS} GPUs x {b} images, {locals_} local crops.
# Learning rate = base_lr * batch_size / 256 = {lr:.3g}. batch_size is GLOBAL (all processes).
arch: {name}
epochs: 100
batch_size: {batch}
local_crops: {locals_}
global_size: [256, 128]
local_size: [128, 64]
global_scale: [0.8, 1.0]
local_scale: [0.05, 0.8]
curriculum: [[0, 2], [40, 4], [60, 6], [80, 8]]   # images per identity (N_id)
out_dim: 65536
hidden_dim: 2048
bottleneck_dim: 256
norm_last_layer: true
base_lr: 5.0e-4
min_lr: 1.0e-6
warmup_epochs: 10
weight_decay: 0.04
weight_decay_end: 0.4
momentum_teacher: 0.996
teacher_temp: 0.04
warmup_teacher_temp: 0.04
warmup_teacher_temp_epochs: 0
student_temp: 0.1
center_momentum: 0.9
clip_grad: 3.0
freeze_last_layer: 1
precision: auto          # bf16 on GPUs that have it, else fp16 + GradScaler; fp32 on CPU
channels_last: auto      # {'on GPU (CNN)' if info['channels_last'] else 'off (transformer)'}
augment_device: auto     # per-pixel augmentation on the training GPU; workers send uint8 crops
num_workers: 10
checkpoint_every: 1000
log_every: 50
"""
        (out / f"{name}.yaml").write_text(text)
    print(f"wrote {len(list_models())} recipes to {out}")


if __name__ == "__main__":
    main()
