#!/usr/bin/env python3
"""PyTorch peer of pansurv's reference model (docs/model.md, issue 4): one full training
step (forward, Efron Cox over the global batch + 0.1 * reconstruction MSE, backward,
AdamW) on a synthetic batch, timed like `pansurv bench model`.

Reference model (defaults; every size is an option):
  omics AE      G=2000 -> 512 (ReLU, dropout 0.1) -> D=128 ; decoder 128 -> 512 (ReLU) -> 2000
  tile CNN      3 x [conv3x3 (32, 64, 128 ch, pad 1) + BatchNorm + ReLU + 2x2 max-pool],
                global average pool -> D per tile; 16 tiles of 64x64 RGB per patient
  MIL           gated attention (Ilse et al. 2018), hidden 64 (w without bias), softmax over valid tiles
  clinical MLP  12 -> 64 -> D
  fusion        modality token + learned modality embedding; 1 post-norm transformer layer
                (4-head self-attention + key-padding mask, feed-forward D -> 256 (GELU tanh) -> D,
                residual + LayerNorm, no dropout), mean over present tokens, Linear D -> 1 = eta
  loss          Efron Cox partial likelihood over the global batch (mean over events)
                + 0.1 * MSE(reconstruction) over patients with omics
  optimizer     AdamW (lr 1e-4, weight decay 1e-2; no decay on biases, norm scales,
                modality embedding)

Best CPU settings used (see docs/performance.md): channels_last activations and
weights, torch.set_num_threads(T) with OMP_NUM_THREADS=T and 1 inter-op thread, and
the glibc malloc settings below (the script re-executes itself with them unless
--no-malloc-env), which stop glibc from mmap/munmap-ing every large activation each
step.

Prints one line `<N> patients/s` (median over the timed steps), like pansurv, or one
JSON object with --json. --check-efron compares the Efron loss with R's survival::coxph.
"""
import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

MALLOC_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}


def parse_args(argv):
    p = argparse.ArgumentParser(description="PyTorch peer of pansurv's reference model")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    p.add_argument("--batch", type=int, default=64, help="global batch in patients (default 64)")
    p.add_argument("--tiles", type=int, default=16, help="tiles per patient (default 16)")
    p.add_argument("--tile-size", type=int, default=64, help="tile edge in pixels (default 64)")
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--clinical", type=int, default=12)
    p.add_argument("--dim", type=int, default=128, help="shared embedding D (default 128)")
    p.add_argument("--missing", type=float, default=0.0,
                   help="fraction of patients missing omics and (separately) slides (default 0)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=True,
                   help="NHWC activations and weights (default)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--no-malloc-env", action="store_true",
                   help="do not re-execute with the glibc malloc settings")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profile", metavar="FILE",
                   help="after the timed steps, profile one more step (torch.profiler) into FILE")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--check-efron", action="store_true",
                   help="compare the Efron loss with R survival::coxph (needs Rscript) and exit")
    return p.parse_args(argv)


def reexec_with_env(args):
    """Thread and malloc settings must be in the environment before libgomp/glibc start."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    for k, v in MALLOC_ENV.items():
        if args.no_malloc_env:
            env.pop(k, None)
        else:
            env[k] = v
    if env == dict(os.environ) or os.environ.get("PS_PEER_REEXEC"):
        return
    env["PS_PEER_REEXEC"] = "1"
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


args = parse_args(sys.argv[1:])
if not args.check_efron:
    reexec_with_env(args)

import torch  # noqa: E402  (after the environment is final)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refmodel_shapes  # noqa: E402

IMPORT_RSS_MIB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # libraries alone


# ---------------------------------------------------------------- loss
def efron_cox_nll(eta, time_, event):
    """Negative Efron partial log-likelihood divided by the number of events.

    eta [N] log-risk, time_ [N], event [N] (1 = event, 0 = censored). For each distinct
    event time t with d events (set D) and risk set R = {i : time_i >= t}:
        loglik += sum_{i in D} eta_i - sum_{l=0}^{d-1} log( sum_{R} e^eta - l/d sum_{D} e^eta )
    which is R survival's ties="efron". Vectorised: bucket by distinct time, reverse
    cumulative sum for the risk sets, per-event rank l inside its tie group."""
    uniq, inv = torch.unique(time_, sorted=True, return_inverse=True)  # ascending times
    u = uniq.numel()
    ev = event.to(eta.dtype)
    m = eta.detach().max()  # shift for exp() overflow; added back below
    w = torch.exp(eta - m)
    zeros = eta.new_zeros(u)
    bucket_w = zeros.index_add(0, inv, w)
    risk = torch.flip(torch.cumsum(torch.flip(bucket_w, [0]), 0), [0])  # sum over time >= t_u
    tied_w = zeros.index_add(0, inv, w * ev)
    d = zeros.index_add(0, inv, ev)
    ev_idx = torch.nonzero(event > 0, as_tuple=False).squeeze(1)
    n_ev = ev_idx.numel()
    if n_ev == 0:
        return eta.sum() * 0.0
    g, _ = torch.sort(inv[ev_idx], stable=True)  # tie group of each event, grouped
    start = torch.cumsum(d, 0) - d  # first position of each group among sorted events
    rank = torch.arange(n_ev, dtype=eta.dtype, device=eta.device) - start[g]
    denom = risk[g] - rank / d[g] * tied_w[g]
    loglik = (eta * ev).sum() - n_ev * m - torch.log(denom).sum()
    return -loglik / n_ev


def check_efron():
    """Efron log-likelihood vs R survival::coxph(Surv(t, e) ~ offset(eta), ties='efron')."""
    g = torch.Generator().manual_seed(7)
    n = 200
    t = torch.randint(1, 40, (n,), generator=g).double()  # many ties
    e = (torch.rand(n, generator=g) < 0.7).double()
    eta = torch.randn(n, generator=g, dtype=torch.float64) * 2.0
    ours = -efron_cox_nll(eta, t, e).item() * int(e.sum().item())
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        f.write("t,e,eta\n")
        for i in range(n):
            f.write(f"{t[i].item():.17g},{int(e[i].item())},{eta[i].item():.17g}\n")
        path = f.name
    try:
        r = subprocess.run(["Rscript", "-e",
                            "suppressMessages(library(survival)); d <- read.csv(commandArgs(TRUE)[1]);"
                            "f <- coxph(Surv(t, e) ~ offset(eta), data = d, ties = 'efron');"
                            "cat(sprintf('%.17g', f$loglik[1]))", path],
                           capture_output=True, text=True, check=True)
    finally:
        os.unlink(path)
    ref = float(r.stdout.strip())
    rel = abs(ours - ref) / abs(ref)
    print(f"efron loglik: torch {ours:.12f}  R {ref:.12f}  rel.diff {rel:.2e}")
    x = eta[:40].clone().requires_grad_(True)  # autograd through the vectorised form vs finite differences
    grad_ok = torch.autograd.gradcheck(lambda v: efron_cox_nll(v, t[:40], e[:40]), (x,), eps=1e-6, atol=1e-8)
    print(f"efron gradient vs finite differences: {'ok' if grad_ok else 'WRONG'}")
    return 0 if rel < 1e-10 and grad_ok else 1


# ---------------------------------------------------------------- model
class OmicsAE(nn.Module):
    def __init__(self, genes, hidden, dim, p):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(genes, hidden), nn.ReLU(), nn.Dropout(p), nn.Linear(hidden, dim))
        self.dec = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, genes))  # no dropout

    def forward(self, x):
        z = self.enc(x)
        return z, self.dec(z)


class TileCNN(nn.Module):
    def __init__(self, chans=(32, 64, 128), cin=3):
        super().__init__()
        layers = []
        for c in chans:  # conv bias dropped: BatchNorm's shift makes it redundant
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            cin = c
        self.body = nn.Sequential(*layers)

    def forward(self, x):  # x [P*K, 3, H, W] -> [P*K, C]
        return self.body(x).mean((2, 3))


class GatedAttention(nn.Module):
    """score_k = w^T (tanh(V h_k) * sigmoid(U h_k)); softmax over the bag's valid tiles."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.V = nn.Linear(dim, hidden)
        self.U = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, 1, bias=False)  # a bias would cancel in the softmax

    def forward(self, h, valid):  # h [P, K, D], valid [P, K] bool
        s = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)
        any_valid = valid.any(1, keepdim=True)
        s = s.masked_fill(~valid, float("-inf")).masked_fill(~any_valid, 0.0)
        a = torch.softmax(s, 1) * valid  # empty bags: all-zero weights, pooled vector 0
        return (a.unsqueeze(-1) * h).sum(1), a


class Fusion(nn.Module):
    def __init__(self, dim, heads, ff, p, n_mod=3):
        super().__init__()
        self.mod_emb = nn.Parameter(torch.randn(n_mod, dim) * 0.02)
        # post-norm, GELU (tanh form) feed-forward; no dropout in the fusion (pansurv: AE only)
        self.layer = nn.TransformerEncoderLayer(dim, heads, ff, p, activation=functools.partial(F.gelu, approximate="tanh"),
                                                batch_first=True)
        self.head = nn.Linear(dim, 1)

    def forward(self, tokens, present):  # tokens [P, M, D], present [P, M] bool
        x = self.layer(tokens + self.mod_emb, src_key_padding_mask=~present)
        pm = present.to(x.dtype).unsqueeze(-1)
        return self.head((x * pm).sum(1) / pm.sum(1)).squeeze(-1)


class ReferenceModel(nn.Module):
    def __init__(self, a):
        super().__init__()
        d = a.dim
        self.omics = OmicsAE(a.genes, 512, d, 0.1)
        self.cnn = TileCNN((32, 64, d))
        self.mil = GatedAttention(d, 64)
        self.clin = nn.Sequential(nn.Linear(a.clinical, 64), nn.ReLU(), nn.Linear(64, d))
        self.fusion = Fusion(d, 4, 256, 0.0)

    def forward(self, b):
        p, k = b["valid"].shape
        z_om, recon = self.omics(b["omics"])
        h = self.cnn(b["tiles"]).view(p, k, -1)
        z_sl, _ = self.mil(h, b["valid"])
        z_cl = self.clin(b["clinical"])
        eta = self.fusion(torch.stack([z_om, z_sl, z_cl], 1), b["present"])
        return eta, recon


def synthetic_batch(a, gen):
    p, k, s = a.batch, a.tiles, a.tile_size
    tiles = torch.rand(p * k, 3, s, s, generator=gen)
    has_om = torch.rand(p, generator=gen) >= a.missing
    has_sl = torch.rand(p, generator=gen) >= a.missing
    has_om[0] = has_sl[0] = True
    present = torch.stack([has_om, has_sl, torch.ones(p, dtype=torch.bool)], 1)
    return {
        "tiles": tiles.contiguous(memory_format=torch.channels_last) if a.channels_last else tiles,
        "valid": has_sl.unsqueeze(1).expand(p, k).contiguous(),
        "omics": torch.randn(p, a.genes, generator=gen),
        "has_omics": has_om,
        "clinical": torch.randn(p, a.clinical, generator=gen),
        "present": present,
        "time": torch.randint(1, 3650, (p,), generator=gen).float().div(30).floor(),  # months: ties
        "event": (torch.rand(p, generator=gen) < 0.7).float(),
    }


def make_optimizer(model):
    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        (no_decay if prm.ndim < 2 or name.endswith("mod_emb") else decay).append(prm)
    groups = [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # fused CPU AdamW (torch >= 2.4) is the fastest; foreach otherwise
        return torch.optim.AdamW(groups, lr=1e-4, fused=True), "fused"
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=1e-4, foreach=True), "foreach"


def train_step(model, opt, b):
    opt.zero_grad(set_to_none=True)
    eta, recon = model(b)
    hm = b["has_omics"]
    loss = efron_cox_nll(eta, b["time"], b["event"]) + 0.1 * F.mse_loss(recon[hm], b["omics"][hm])
    loss.backward()
    opt.step()
    return loss.detach()


def step_flops(a):
    return refmodel_shapes.step_flops(batch=a.batch, genes=a.genes, tiles=a.tiles, tile_size=a.tile_size,
                                      dim=a.dim, channels=(32, 64, a.dim), clinical=a.clinical)


def main():
    if args.check_efron:
        torch.set_default_dtype(torch.float64)
        return check_efron()
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = ReferenceModel(args)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt, opt_kind = make_optimizer(model)
    b = synthetic_batch(args, gen)
    n_par = sum(q.numel() for q in model.parameters())
    want = refmodel_shapes.param_count(genes=args.genes, dim=args.dim, channels=(32, 64, args.dim),
                                       clinical=args.clinical, tiles=args.tiles, tile_size=args.tile_size)
    if n_par != want:  # the FLOP count below assumes exactly these shapes
        print(f"torch_reference: {n_par} parameters, refmodel_shapes says {want}", file=sys.stderr)
        return 1

    for _ in range(args.warmup):
        train_step(model, opt, b)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = train_step(model, opt, b)
        times.append(time.perf_counter() - t0)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_step(model, opt, b)
        with open(args.profile, "w") as f:
            f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25) + "\n")
    if not torch.isfinite(loss):
        print("torch_reference: loss is not finite", file=sys.stderr)
        return 1
    med = statistics.median(times)
    fl = step_flops(args)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    res = {
        "patients_per_s": args.batch / med,
        "step_s_median": med,
        "step_s_all": times,
        "gflops_achieved": fl["total_gflop"] / med,
        "step_gflop": fl["total_gflop"],
        "conv_gflop": fl["conv_gflop"],
        "linear_gflop": fl["linear_gflop"],
        "peak_rss_mib": rss_mib,
        "import_rss_mib": IMPORT_RSS_MIB,
        "params": n_par,
        "threads": args.threads,
        "batch": args.batch,
        "tiles": args.tiles,
        "tile_size": args.tile_size,
        "channels_last": args.channels_last,
        "malloc_env": {k: os.environ.get(k, "(unset)") for k in MALLOC_ENV},
        "optimizer": "AdamW " + opt_kind,
        "torch": torch.__version__,
        "torch_file": os.path.dirname(torch.__file__),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE", "(unset)"),
        "final_loss": loss.item(),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['patients_per_s']:.2f} patients/s")
        print(f"step {med * 1e3:.1f} ms median of {args.steps}, {fl['total_gflop']:.1f} GFLOP/step, "
              f"{res['gflops_achieved']:.1f} GFLOP/s, peak RSS {rss_mib:.0f} MiB ({IMPORT_RSS_MIB:.0f} after import), torch {torch.__version__}, "
              f"{args.threads} thread(s), channels_last={args.channels_last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
