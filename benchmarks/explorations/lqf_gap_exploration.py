# ruff: noqa: B905
"""Exploration: can the linearized model represent what fine-tuning finds, and does it find it?

Around ``w0`` = pretrained ``efficientnet_lite0`` with the ridge-probe head (fitted on the training
split, its strength chosen on validation), all weights linearized:

1. ``probe``: the network at ``w0`` (the linear probe itself);
2. ``finetune``: non-linear fine-tuning from ``w0`` (all weights, cross-entropy, AdamW, cosine
   schedule, BatchNorm statistics frozen), learning rate chosen on validation from LRS;
3. ``f_lin at the fine-tuned weights``: ``f(w0) + J (w_ft - w0)`` -- can the linear model represent
   what fine-tuning found?  Also the non-linear network evaluated along the same straight line;
4. ``linearized, same recipe``: the linear model trained exactly like 2 (same optimizer, loss,
   learning rate, epochs, batches) -- does its training find it?  With cross-entropy and MSE.

Validation accuracy selects the learning rate; test accuracy (``--max-test`` images) is reported.

Usage::

    python benchmarks/explorations/lqf_gap_exploration.py DATA SHOTS SEED [LRS] [EPOCHS]
    python benchmarks/explorations/lqf_gap_exploration.py fashion-mnist 10 0 1e-4,3e-4,1e-3 30
"""

import copy
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from torch import nn

from lqf.data import load_data
from lqf.linearization import LinearizedModel
from lqf.methods.lqf import fit_probe_head
from lqf.models import build_model
from lqf.training.evaluate import apply

data_spec, shots, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lrs = [float(v) for v in (sys.argv[4] if len(sys.argv) > 4 else "1e-4,3e-4,1e-3").split(",")]
epochs = int(sys.argv[5]) if len(sys.argv) > 5 else 30
BATCH = 32
out_json = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "runs",
    "gap",
    f"{data_spec}-{shots}-{seed}.json",
)
os.makedirs(os.path.dirname(out_json), exist_ok=True)
results: dict = json.load(open(out_json)) if os.path.exists(out_json) else {}

data = load_data(data_spec, image_size=64, shots=shots, val_per_class=20, seed=seed, max_test=2000)
C = len(data.classes)
torch.manual_seed(seed)
base = build_model("efficientnet_lite0", C, pretrained=True, generator=torch.Generator().manual_seed(seed))
base.eval()
ftr = apply(base.embed, data.train, batch_size=256)
fva = apply(base.embed, data.val, batch_size=256)
fit_probe_head(base, ftr, data.train.labels, fva, data.val.labels)
ytr = data.train.labels
Xtr = torch.cat([x for x, _ in data.train.batches(256)])
Xva = torch.cat([x for x, _ in data.val.batches(256)])
Xte = torch.cat([x for x, _ in data.test.batches(256)])
yva, yte = data.val.labels, data.test.labels


def acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == y).float().mean())


def logits_of(fn, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i : i + 256]) for i in range(0, len(x), 256)])


def bn_frozen(m: nn.Module) -> None:
    m.train()
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) or isinstance(mod, nn.Dropout):
            mod.eval()


def train(params, forward, loss_name: str, lr: float, set_mode) -> float:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    n = len(Xtr)
    steps = epochs * math.ceil(n / BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    t0 = time.perf_counter()
    for _ in range(epochs):
        set_mode()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            out = forward(Xtr[idx])
            if loss_name == "ce":
                loss = nn.functional.cross_entropy(out, ytr[idx])
            else:
                loss = 0.5 * (out - nn.functional.one_hot(ytr[idx], C).float()).pow(2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return time.perf_counter() - t0


def save() -> None:
    tmp = out_json + ".tmp"
    json.dump(results, open(tmp, "w"), indent=1)
    os.replace(tmp, out_json)


if "probe" not in results:
    lg = logits_of(base, Xva), logits_of(base, Xte)
    results["probe"] = {"val": acc(lg[0], yva), "test": acc(lg[1], yte)}
    save()
print("probe", results["probe"], flush=True)

best = None
for lr in lrs:
    key = f"finetune lr={lr:g}"
    ft = copy.deepcopy(base)
    for p in ft.parameters():
        p.requires_grad_(True)
    secs = train(list(ft.parameters()), ft, "ce", lr, lambda m=ft: bn_frozen(m))
    ft.eval()
    w_ft = {k: v.detach().clone() for k, v in ft.named_parameters()}
    if key not in results:
        results[key] = {"val": acc(logits_of(ft, Xva), yva), "test": acc(logits_of(ft, Xte), yte), "s": secs}
    # the linear model at the fine-tuned weights, and the network along the same segment
    lin = LinearizedModel(copy.deepcopy(base), [n for n, _ in base.named_parameters()])
    with torch.no_grad():
        for d, name, w in zip(lin.delta, lin.names, lin.w0):
            d.copy_(w_ft[name] - w)
    f_ft_te = logits_of(ft, Xte)
    f_lin_te = logits_of(lin, Xte)
    f0_te = logits_of(base, Xte)
    rel = float((f_lin_te - f_ft_te).norm() / (f_ft_te - f0_te).norm())
    results[key].update(
        {
            "f_lin at w_ft val": acc(logits_of(lin, Xva), yva),
            "f_lin at w_ft test": acc(f_lin_te, yte),
            "|f_lin - f_ft| / |f_ft - f0| test": rel,
            "|w_ft - w0|": float(sum((w_ft[n] - w).pow(2).sum() for n, w in zip(lin.names, lin.w0)).sqrt()),
        }
    )
    print(key, results[key], flush=True)
    save()
    for loss in ("ce", "mse"):
        lkey = f"linearized {loss} lr={lr:g}"
        if lkey in results:
            print(lkey, results[lkey], flush=True)
            continue
        lin2 = LinearizedModel(copy.deepcopy(base), [n for n, _ in base.named_parameters()])
        secs = train(list(lin2.delta), lin2, loss, lr, lambda m=lin2: m.train())
        lin2.eval()
        dn = float(sum(d.pow(2).sum() for d in lin2.delta).sqrt())
        results[lkey] = {
            "val": acc(logits_of(lin2, Xva), yva),
            "test": acc(logits_of(lin2, Xte), yte),
            "s": secs,
            "|dw|": dn,
        }
        print(lkey, results[lkey], flush=True)
        save()
