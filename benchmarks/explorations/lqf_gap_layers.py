# ruff: noqa: B905
"""Exploration: where does fine-tuning's gain over the linear probe live, and how linear is it?

Same start as ``lqf_gap_exploration.py`` (pretrained ``efficientnet_lite0`` with the ridge-probe
head), fine-tuned non-linearly at learning rate LR (all weights, cross-entropy, AdamW, cosine,
BatchNorm statistics frozen, 30 epochs, batch 32). With ``D = w_ft - w0`` split by network stage
``S``, it reports for each stage:

* the test/validation accuracy of the network with only that stage moved, ``f(w0 + D_S)``, and with
  every stage but that one moved, ``f(w0 + D - D_S)``;
* how linear the move is: ``|f(w0 + D_S) - f_lin(w0 + D_S)| / |f(w0 + D_S) - f(w0)|`` on test;

and, along the straight segment ``w0 + t D``, the accuracies of the network and of ``f_lin``.

Usage::

    python benchmarks/explorations/lqf_gap_layers.py DATA SHOTS SEED LR
"""

import copy
import json
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from torch import nn
from torch.func import functional_call

from lqf.data import load_data
from lqf.linearization import LinearizedModel
from lqf.methods.lqf import fit_probe_head
from lqf.models import build_model
from lqf.training.evaluate import apply

data_spec, shots, seed, lr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
EPOCHS, BATCH = 30, 32
out_json = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "runs",
    "gap",
    f"layers-{data_spec}-{shots}-{seed}-{lr:g}.json",
)
os.makedirs(os.path.dirname(out_json), exist_ok=True)

data = load_data(data_spec, image_size=64, shots=shots, val_per_class=20, seed=seed, max_test=2000)
C = len(data.classes)
torch.manual_seed(seed)
base = build_model("efficientnet_lite0", C, pretrained=True, generator=torch.Generator().manual_seed(seed))
base.eval()
fit_probe_head(
    base,
    apply(base.embed, data.train, batch_size=256),
    data.train.labels,
    apply(base.embed, data.val, batch_size=256),
    data.val.labels,
)
Xtr = torch.cat([x for x, _ in data.train.batches(256)])
Xva = torch.cat([x for x, _ in data.val.batches(256)])
Xte = torch.cat([x for x, _ in data.test.batches(256)])
ytr, yva, yte = data.train.labels, data.val.labels, data.test.labels


def acc(logits, y) -> float:
    return 100.0 * float((logits.argmax(1) == y).float().mean())


def logits_of(fn, x):
    with torch.no_grad():
        return torch.cat([fn(x[i : i + 256]) for i in range(0, len(x), 256)])


ft = copy.deepcopy(base)
opt = torch.optim.AdamW(ft.parameters(), lr=lr, weight_decay=0.0)
steps = EPOCHS * math.ceil(len(Xtr) / BATCH)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
g = torch.Generator().manual_seed(seed)
for p in ft.parameters():
    p.requires_grad_(True)
for _ in range(EPOCHS):
    ft.eval()  # BatchNorm statistics frozen, dropout off
    perm = torch.randperm(len(Xtr), generator=g)
    for i in range(0, len(Xtr), BATCH):
        idx = perm[i : i + BATCH]
        loss = nn.functional.cross_entropy(ft(Xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
w0 = {k: v.detach().clone() for k, v in base.named_parameters()}
D = {k: v.detach() - w0[k] for k, v in ft.named_parameters()}


def stage(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "head":
        return "head"
    if "blocks" in parts:
        return f"block {parts[parts.index('blocks') + 1]}"
    return "stem" if any(s in name for s in ("conv_stem", "bn1")) else "conv_head"


stages: dict[str, list[str]] = {}
for k in D:
    stages.setdefault(stage(k), []).append(k)
print({s: len(v) for s, v in stages.items()}, flush=True)
lin = LinearizedModel(copy.deepcopy(base), list(D))
f0_te = logits_of(base, Xte)


def net_at(delta: dict[str, torch.Tensor]):
    w = {k: w0[k] + delta.get(k, 0) for k in w0}
    return lambda x: functional_call(base, w, (x,))


def lin_at(delta: dict[str, torch.Tensor]):
    with torch.no_grad():
        for d, n in zip(lin.delta, lin.names):
            d.copy_(delta.get(n, torch.zeros_like(d)))
    return lin


res: dict = {"lr": lr, "probe": {"val": acc(logits_of(base, Xva), yva), "test": acc(f0_te, yte)}}
full_te = logits_of(net_at(D), Xte)
res["finetune"] = {"val": acc(logits_of(net_at(D), Xva), yva), "test": acc(full_te, yte)}
print(res, flush=True)
res["stages"] = {}
for s, names in stages.items():
    only = {k: D[k] for k in names}
    rest = {k: v for k, v in D.items() if k not in only}
    f_only = logits_of(net_at(only), Xte)
    f_lin_only = logits_of(lin_at(only), Xte)
    res["stages"][s] = {
        "|D_S|": float(sum(v.pow(2).sum() for v in only.values()).sqrt()),
        "only: val": acc(logits_of(net_at(only), Xva), yva),
        "only: test": acc(f_only, yte),
        "only: f_lin test": acc(f_lin_only, yte),
        "only: nonlinearity": float((f_only - f_lin_only).norm() / (f_only - f0_te).norm()),
        "all but: val": acc(logits_of(net_at(rest), Xva), yva),
        "all but: test": acc(logits_of(net_at(rest), Xte), yte),
    }
    print(s, res["stages"][s], flush=True)
res["segment"] = {}
for t in (0.1, 0.25, 0.5, 1.0):
    dt = {k: t * v for k, v in D.items()}
    f_t = logits_of(net_at(dt), Xte)
    fl = logits_of(lin_at(dt), Xte)
    res["segment"][str(t)] = {
        "net test": acc(f_t, yte),
        "f_lin test": acc(fl, yte),
        "nonlinearity": float((f_t - fl).norm() / (f_t - f0_te).norm()),
    }
    print(t, res["segment"][str(t)], flush=True)
json.dump(res, open(out_json, "w"), indent=1)
