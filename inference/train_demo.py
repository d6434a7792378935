"""Train the bundled demo model: a ~60k-parameter CNN that tells defective synthetic
brushed-metal surfaces from clean ones. Reproducible (fixed seeds), ~2 minutes on 2 cores.

    .venv/bin/pip install torch==2.13.0      # the `train` extra; never a runtime dependency
    .venv/bin/python -m plcbridge.inference.train_demo

Writes inference/models/demo/defect_cnn.onnx (one self-contained file, opset 17) and its
manifest.json (sha256, interface, preprocessing, threshold), then re-checks the held-out
accuracy through the daemon's own `Model.judge`, i.e. through ONNX Runtime.

The net is fed tensors made by `plcbridge.inference.preprocess.Preprocessor` from
`render_surface` frames, the very code the daemon runs, with the preprocessing parameters
written into the manifest; nothing of it is baked into the graph. Every epoch renders a
fresh training set (rendering is ~0.5 ms a frame), so the net never sees a frame twice and
cannot memorise; the held-out set comes from a separate seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from plcbridge.adapters.camera.synthetic import render_surface
from plcbridge.inference.manifest import Manifest, OutputSpec, Preprocessing, TensorSpec
from plcbridge.inference.preprocess import Preprocessor

SEED = 1234
HELD_OUT_SEED = 777  # tests use yet other seeds
FRAME = (256, 256)  # (w, h): the synthetic camera's default frame
OPSET = 17
OUT_DIR = Path(__file__).resolve().parent / "models" / "demo"
ONNX_NAME = "defect_cnn.onnx"

PREPROCESSING = Preprocessing(
    resize=[128, 128], color="gray", scale=1 / 255, mean=[0.5], std=[0.25], layout="nchw"
)
INPUT = TensorSpec(name="image", shape=PREPROCESSING.tensor_shape(), dtype="float32")


class DefectCNN(nn.Module):
    """Four conv-BN-ReLU blocks (16-32-64-64 channels, 128 -> 8 px), then global
    max+mean pooling: a defect is small and local, so max pooling carries it, while the
    mean gives the head the surface's overall level to compare against."""

    def __init__(self) -> None:
        super().__init__()
        chans = [1, 16, 32, 64, 64]
        # Block 1 strides instead of pooling: the same 128 -> 64 px, at a third of the
        # training cost (full-resolution BN/ReLU/pool dominate on a CPU). A 3x3 kernel at
        # stride 2 still sees every pixel, so one-pixel scratches are not stepped over.
        blocks: list[nn.Module] = [nn.Conv2d(1, chans[1], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(chans[1]), nn.ReLU()]
        for cin, cout in zip(chans[1:], chans[2:]):
            blocks += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(2 * chans[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # -> defect logit, shape [N, 1]
        f = self.features(x)
        return self.head(torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1))


class WithSigmoid(nn.Module):
    """The exported graph outputs the defect probability (manifest output.kind "probability")."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def make_set(seed: int, n: int, pre: Preprocessor) -> tuple[np.ndarray, np.ndarray]:
    """n frames, half of them defective, preprocessed exactly as at run time."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2).astype(np.float32)
    x = np.empty((n, *INPUT.shape[1:]), np.float32)
    for i in range(n):
        x[i] = pre(render_surface(rng, FRAME[0], FRAME[1], bool(y[i])))[0]
    return x, y


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(torch.from_numpy(x[i : i + 256])) for i in range(0, len(x), 256)])
    return float(((logits[:, 0] >= 0).numpy() == (y >= 0.5)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--per-epoch", type=int, default=2560)
    ap.add_argument("--held-out", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    pre = Preprocessor(PREPROCESSING, INPUT)
    epoch_seeds = np.random.SeedSequence(SEED).generate_state(args.epochs)

    t_start = time.perf_counter()
    x_val, y_val = make_set(HELD_OUT_SEED, args.held_out, pre)
    net = DefectCNN().to(memory_format=torch.channels_last)  # ~1.5x faster convs on CPU
    print(f"DefectCNN: {sum(p.numel() for p in net.parameters())} parameters")
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = args.per_epoch // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    loss_fn = nn.BCEWithLogitsLoss()

    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        x, y = make_set(int(epoch_seeds[epoch]), args.per_epoch, pre)
        t_data = time.perf_counter() - t0
        order = torch.from_numpy(np.random.default_rng(int(epoch_seeds[epoch])).permutation(len(x)))
        xt, yt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last), torch.from_numpy(y)
        net.train()
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch : (step + 1) * args.batch]
            opt.zero_grad()
            loss = loss_fn(net(xt[idx])[:, 0], yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        acc = accuracy(net, x_val, y_val)
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {total / steps_per_epoch:.4f}  held-out acc {acc:.4f}  "
            f"(data {t_data:.1f} s, total {time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    train_s = time.perf_counter() - t_start
    print(f"training took {train_s:.1f} s; held-out accuracy (torch) {accuracy(net, x_val, y_val):.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / ONNX_NAME
    export = WithSigmoid(net).eval()
    torch.onnx.export(
        export, (torch.zeros(INPUT.shape),), str(onnx_path), dynamo=False, opset_version=OPSET,
        input_names=[INPUT.name], output_names=["defect_prob"], do_constant_folding=True,
    )
    manifest = Manifest(
        name="demo-defect-cnn",
        version=1,
        file=ONNX_NAME,
        sha256=hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        opset=OPSET,
        input=INPUT,
        output=OutputSpec(name="defect_prob", shape=[1, 1], dtype="float32", kind="probability"),
        preprocessing=PREPROCESSING,
        threshold=0.5,
        labels=("pass", "fail"),
    )
    (args.out / "manifest.json").write_text(json.dumps(manifest.model_dump(mode="json", exclude_none=True), indent=2) + "\n")
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes) and manifest.json")

    # The real check: the exported file through the daemon's own code path.
    from plcbridge.inference.session import Model

    rng = np.random.default_rng(HELD_OUT_SEED)
    labels = rng.permutation(np.arange(args.held_out) % 2)
    with Model(args.out) as model:
        hits = sum(
            model.judge(render_surface(rng, FRAME[0], FRAME[1], bool(d))).label == ("fail" if d else "pass")
            for d in labels
        )
    print(f"held-out accuracy through Model.judge (onnxruntime): {hits / args.held_out:.4f}")


if __name__ == "__main__":
    main()
