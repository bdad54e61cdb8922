#!/usr/bin/env python3
"""PyTorch baseline for the dsv3 training benchmark (DeepSeek-V2/V3, CPU).

A benchmark peer of the C++ trainer, written in plain PyTorch modules from the definitions in
`shared/testdata/training/README.md` and `shared/testdata/models/README.md` ("What the
references pin down"). PyTorch is never a dependency of the build or of the tests; install it
only to run this script (Debian 12: `apt-get install -y python3-torch`, torch 1.13). If the
`python3` on PATH has no torch (e.g. a pyenv interpreter), the script re-executes itself with
`/usr/bin/python3`.

Model and objective (identical to the C++ trainer)
--------------------------------------------------
* Forward: embedding -> decoder layers (MLA with q_lora or q_proj, interleaved-pair RoPE with
  YaRN, naive causal attention with softmax in float32; dense SwiGLU MLP for the first
  `first_k_dense_replace` layers, DeepSeekMoE after) -> model.norm -> lm_head.
  RMSNorm in float32 with eps = rms_norm_eps. Router logits/scores in float32.
* Routing: sigmoid + `noaux_tc` (choice score s + e_score_correction_bias, group score = sum of
  the top-2 choice scores per group, keep `topk_group` groups, top-k by choice score, weights =
  unbiased s of the chosen experts, renormalized when `norm_topk_prob`, times
  `routed_scaling_factor`), or softmax `greedy` / `group_limited_greedy` (group max). Selection
  is not differentiated; the weights are. Experts are dispatched per expert with index_select /
  index_add_ (no Python loop over tokens).
* MTP (`num_nextn_predict_layers` = D > 0, weights under model.layers.<num_hidden_layers + k-1>):
  depth k has T-k slots; slot i combines h^{k-1}_i (h^0 = model.norm output, h^k = block output
  of depth k) with embed(t_{i+k}) as eh_proj(concat[enorm(emb), hnorm(h)]), runs the MTP decoder
  block (causal over the slots, RoPE position i) and predicts t_{i+k+1} through
  lm_head(shared_head.norm(.)). embed_tokens / lm_head are shared (tied) with the main model.
* Loss: L = CE + lambda * mean_k(MTP_k) + sum over MoE layers (MTP's included) of the
  sequence-wise balance loss alpha * 1/B * sum_b sum_j f_bj * P_bj with
  f_bj = N_r/(K_r*T_l) * count_bj (actual routing), P_bj = mean_t s'_tj (s normalized over all
  experts for sigmoid). Defaults lambda = 0.3, alpha = 0.01.
* After each AdamW step (lr 1e-3, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on 2-D tensors,
  0 on 1-D), the aux-loss-free bias update b <- b + gamma * sign(mean(load) - load),
  gamma = 0.001, on every noaux_tc router, with the loads of that step's forward.

Modes
-----
Correctness check against the golden training references (both tiny models):

    python3 bench/train_torch.py --check /work/shared/testdata/training

  For every sub-folder with a train_reference.json it loads the starting checkpoint, compares the
  state-0 losses (total / CE / MTP CE / balance, 1e-4 abs; balance per layer 1e-6), expert loads
  (exact), the per-tensor gradients (1e-4 relative L2) and the global gradient L2 norm (1e-4
  relative), then runs 3 AdamW steps with bias updates and compares the biases (bit-exact), the
  trajectory losses (1e-3 abs), loads (exact) and parameter samples. Exit status 0 when all pass.

Benchmark on random tokens:

    python3 bench/train_torch.py --config CONFIG.json [--model DIR] --precision fp32|bf16 \
        --batch B --seq T --steps N --warmup W --threads N [--json]

  Weights come from the HF checkpoint in --model (safetensors; FP8 E4M3 + weight_scale_inv
  dequantized to float32, BF16 widened) or, without --model, are random (normal std
  initializer_range, default 0.02; norms 1; correction bias 0). bf16 = torch.autocast('cpu',
  dtype=torch.bfloat16) around the forward (router and norms stay float32), float32 master
  weights and optimizer. Every step uses a fresh random batch of B sequences of T+1 tokens
  (inputs = [:, :T], targets = [:, 1:]). Reported, averaged over the N timed steps after W
  warmup steps: tokens/s (B*T / step time), achieved GFLOP/s (train_flops_per_token * B*T /
  step time) and seconds per phase: forward (incl. losses), backward, optimizer (AdamW + bias
  update + zero_grad).

FLOP count (train_flops_per_token(config, seq); only matmul FLOPs, 2 per multiply-add)
--------------------------------------------------------------------------------------
Letters: D hidden_size, H num_attention_heads, N qk_nope_head_dim, R qk_rope_head_dim,
V v_head_dim, C kv_lora_rank, Q q_lora_rank (0 when null), I intermediate_size,
Im moe_intermediate_size, E n_routed_experts, K num_experts_per_tok, S n_shared_experts,
Voc vocab_size, Lm num_hidden_layers, Dm num_nextn_predict_layers, T = seq.

    attn_proj     = 2*(D*Q + Q*H*(N+R))   if Q > 0    (q_a_proj, q_b_proj)
                  = 2*D*H*(N+R)           otherwise   (q_proj)
                  + 2*D*(C+R) + 2*C*H*(N+V) + 2*H*V*D (kv_a_proj_with_mqa, kv_b_proj, o_proj)
    attn_core(L)  = 2*(H*(N+R) + H*V) * (L+1)/2       (scores QK^T and P.V; (L+1)/2 = average
                                                       causal context over a sequence of L)
    ffn(i)        = 2*3*D*I                           dense layer (i < first_k_dense_replace or
                                                       i % moe_layer_freq != 0)
                  = 2*D*E + K*2*3*D*Im + 2*3*D*(S*Im) MoE layer (router, top-K routed experts,
                                                       shared experts)
    layer(i, L)   = attn_proj + attn_core(L) + ffn(i)
    head          = 2*D*Voc                           (lm_head)
    main_token    = sum_{i=0}^{Lm-1} layer(i, T) + head
    mtp_token(k)  = 2*(2D)*D + layer(Lm+k-1, T-k) + head     (eh_proj, MTP block, shared head)
    forward_seq   = T * main_token + sum_{k=1}^{Dm} (T-k) * mtp_token(k)
    train_flops_per_token(config, T) = 3 * forward_seq / T  (backward = 2 x forward)

The MTP depth k runs on its T-k slots only (slot T-k.. would need tokens past the batch), hence
the (T-k) weight and its own causal context (T-k+1)/2. Not counted: embedding lookups, norms,
RoPE, softmax, SwiGLU, losses, optimizer.
"""

import argparse
import json
import math
import os
import sys
import time


def build_parser():
    p = argparse.ArgumentParser(
        prog="train_torch.py",
        description="PyTorch baseline of the dsv3 DeepSeek-V2/V3 CPU trainer: correctness check "
                    "against the golden training references (--check) or a training-step "
                    "benchmark on random tokens (--config / --model).",
        epilog="Example: python3 bench/train_torch.py --check /work/shared/testdata/training\n"
               "         python3 bench/train_torch.py --config "
               "/work/shared/testdata/models/v3-tiny/config.json --precision fp32 --batch 2 "
               "--seq 64 --steps 3 --warmup 1 --threads 1 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", metavar="DIR",
                   help="folder of training references (sub-folders with train_reference.json); "
                        "run the correctness check and exit")
    p.add_argument("--config", metavar="CONFIG.json",
                   help="HF config.json (default: DIR/config.json of --model)")
    p.add_argument("--model", metavar="DIR",
                   help="HF checkpoint folder (safetensors) to load; random init when omitted")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32, or bf16 autocast around the forward with fp32 master weights")
    p.add_argument("--batch", type=int, default=2, help="sequences per step (B)")
    p.add_argument("--seq", type=int, default=64, help="tokens per sequence (T)")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--layers", type=int, default=None,
                   help="override num_hidden_layers (random init only)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and tokens")
    p.add_argument("--mtp-lambda", type=float, default=0.3, help="MTP loss weight (0.3)")
    p.add_argument("--balance-alpha", type=float, default=0.01,
                   help="sequence-wise balance loss weight (0.01)")
    p.add_argument("--bias-gamma", type=float, default=0.001,
                   help="aux-loss-free bias update speed (0.001)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (1e-3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _threads_from_argv(argv):
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1" if "--check" in argv or any(a.startswith("--check=") for a in argv) else None


def _ensure_torch():
    # Debian's torch calls the system libblas.so.3 for float32 GEMM and does not pass its thread
    # count to it: pin the BLAS threads to --threads before torch (and the BLAS) is loaded.
    nt = _threads_from_argv(sys.argv[1:])
    if nt:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            os.environ.setdefault(var, nt)
    import importlib.util
    if importlib.util.find_spec("torch") is not None:
        return
    alt = "/usr/bin/python3"
    if (not os.environ.get("DSV3_TRAIN_TORCH_REEXEC") and os.path.exists(alt)
            and os.path.realpath(alt) != os.path.realpath(sys.executable)):
        os.environ["DSV3_TRAIN_TORCH_REEXEC"] = "1"
        os.execv(alt, [alt] + sys.argv)
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        build_parser().print_help()
        sys.exit(0)
    sys.exit("error: PyTorch not found (Debian 12: apt-get install -y python3-torch)")


_ensure_torch()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def blas_library():
    """Path of the BLAS shared library torch uses for float32 GEMM (from /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as fh:
            libs = sorted({ln.split()[-1] for ln in fh
                           if any(k in ln.split()[-1] for k in ("blas", "mkl_", "libmkl"))})
        return ", ".join(libs) if libs else "none found"
    except OSError:
        return "unknown"


# --------------------------------------------------------------------------------------------
# Config helpers and the FLOP count
# --------------------------------------------------------------------------------------------

def _is_moe_layer(cfg, i):
    n_routed = cfg.get("n_routed_experts") or 0
    freq = cfg.get("moe_layer_freq", 1) or 1
    return n_routed > 0 and i >= cfg.get("first_k_dense_replace", 0) and i % freq == 0


def _num_mtp(cfg):
    return int(cfg.get("num_nextn_predict_layers", 0) or 0)


def train_flops_per_token(config, seq):
    """Training matmul FLOPs per main-model token (3 x forward); formula in the module docstring."""
    c = config
    D, H = c["hidden_size"], c["num_attention_heads"]
    N, R, V = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    C, Q = c["kv_lora_rank"], c.get("q_lora_rank") or 0
    I, Im = c["intermediate_size"], c.get("moe_intermediate_size") or 0
    E, K, S = c.get("n_routed_experts") or 0, c.get("num_experts_per_tok") or 0, \
        c.get("n_shared_experts") or 0
    Voc, Lm, Dm = c["vocab_size"], c["num_hidden_layers"], _num_mtp(c)
    T = seq

    attn_proj = 2 * (D * Q + Q * H * (N + R)) if Q > 0 else 2 * D * H * (N + R)
    attn_proj += 2 * D * (C + R) + 2 * C * H * (N + V) + 2 * H * V * D

    def attn_core(L):
        return 2 * (H * (N + R) + H * V) * (L + 1) / 2.0

    def ffn(i):
        if _is_moe_layer(c, i):
            return 2 * D * E + K * 2 * 3 * D * Im + 2 * 3 * D * (S * Im)
        return 2 * 3 * D * I

    def layer(i, L):
        return attn_proj + attn_core(L) + ffn(i)

    head = 2 * D * Voc
    main_token = sum(layer(i, T) for i in range(Lm)) + head
    forward_seq = T * main_token
    for k in range(1, Dm + 1):
        if T - k <= 0:
            continue
        mtp_token = 2 * (2 * D) * D + layer(Lm + k - 1, T - k) + head
        forward_seq += (T - k) * mtp_token
    return 3.0 * forward_seq / T


def yarn_inv_freq_and_scale(cfg):
    """inv_freq [R/2] (float32, YaRN when rope_scaling.type is yarn) and the softmax scale."""
    R = cfg["qk_rope_head_dim"]
    theta = float(cfg.get("rope_theta", 10000.0))
    inv = 1.0 / (theta ** (torch.arange(0, R, 2, dtype=torch.float32) / R))
    scale = (cfg["qk_nope_head_dim"] + R) ** -0.5
    rs = cfg.get("rope_scaling") or None
    if rs and (rs.get("type") or rs.get("rope_type")) == "yarn":
        factor = float(rs["factor"])
        orig = float(rs["original_max_position_embeddings"])
        beta_fast, beta_slow = float(rs.get("beta_fast", 32)), float(rs.get("beta_slow", 1))

        def cd(r):
            return R * math.log(orig / (r * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(cd(beta_fast)), 0)
        high = min(math.ceil(cd(beta_slow)), R - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(R // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        smooth = 1 - ramp
        inv = inv / factor * (1 - smooth) + inv * smooth
        if factor > 1:
            m = 0.1 * float(rs.get("mscale_all_dim", 1.0) or 1.0) * math.log(factor) + 1.0
            scale = scale * m * m
    return inv, scale


# --------------------------------------------------------------------------------------------
# Modules (parameter names = HF checkpoint names)
# --------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def apply_rope(x, cos, sin):
    """Interleaved pairs (2i, 2i+1) rotate by angle pos*inv_freq[i]; cos/sin broadcastable to
    x[..., R/2]. Computed in float32, returned in x's dtype."""
    xf = x.float()
    x0, x1 = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)


class MLA(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D, H = cfg["hidden_size"], cfg["num_attention_heads"]
        self.H, self.N, self.R, self.V = H, cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], \
            cfg["v_head_dim"]
        self.C = cfg["kv_lora_rank"]
        self.Q = cfg.get("q_lora_rank") or 0
        eps = cfg.get("rms_norm_eps", 1e-6)
        if self.Q:
            self.q_a_proj = nn.Linear(D, self.Q, bias=False)
            self.q_a_layernorm = RMSNorm(self.Q, eps)
            self.q_b_proj = nn.Linear(self.Q, H * (self.N + self.R), bias=False)
        else:
            self.q_proj = nn.Linear(D, H * (self.N + self.R), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(D, self.C + self.R, bias=False)
        self.kv_a_layernorm = RMSNorm(self.C, eps)
        self.kv_b_proj = nn.Linear(self.C, H * (self.N + self.V), bias=False)
        self.o_proj = nn.Linear(H * self.V, D, bias=False)

    def forward(self, x, rope):
        B, T, _ = x.shape
        H, N, R, V = self.H, self.N, self.R, self.V
        cos, sin, mask, scale = rope
        if self.Q:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        else:
            q = self.q_proj(x)
        q = q.view(B, T, H, N + R)
        q_nope, q_pe = q.split([N, R], dim=-1)
        kv_a = self.kv_a_proj_with_mqa(x)
        latent, k_pe = kv_a.split([self.C, R], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(latent)).view(B, T, H, N + V)
        k_nope, v = kv.split([N, V], dim=-1)
        q_pe = apply_rope(q_pe, cos, sin)                       # [B, T, H, R]
        k_pe = apply_rope(k_pe.unsqueeze(2), cos, sin)          # [B, T, 1, R]
        q = torch.cat((q_nope, q_pe.to(q_nope.dtype)), dim=-1).transpose(1, 2)
        k = torch.cat((k_nope, k_pe.to(k_nope.dtype).expand(B, T, H, R)), dim=-1).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale + mask
        p = torch.softmax(scores, dim=-1)
        o = torch.matmul(p, v.transpose(1, 2))                  # [B, H, T, V]
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * V))


class MLP(nn.Module):
    def __init__(self, dim, inter):
        super().__init__()
        self.gate_proj = nn.Linear(dim, inter, bias=False)
        self.up_proj = nn.Linear(dim, inter, bias=False)
        self.down_proj = nn.Linear(inter, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        E = cfg["n_routed_experts"]
        self.weight = nn.Parameter(torch.empty(E, cfg["hidden_size"]))
        self.method = cfg.get("topk_method", "greedy")
        self.scoring = cfg.get("scoring_func", "softmax")
        self.K = cfg["num_experts_per_tok"]
        self.n_group = cfg.get("n_group") or 1
        self.topk_group = cfg.get("topk_group") or 1
        self.norm_topk = bool(cfg.get("norm_topk_prob", False))
        self.scaling = float(cfg.get("routed_scaling_factor", 1.0) or 1.0)
        if self.method == "noaux_tc":
            self.register_buffer("e_score_correction_bias", torch.zeros(E))
        else:
            self.e_score_correction_bias = None

    def forward(self, x):
        """x [M, D] -> (scores s [M, E] float32, indices [M, K], weights [M, K] float32)."""
        with torch.autocast("cpu", enabled=False):
            logits = F.linear(x.float(), self.weight)
        s = torch.sigmoid(logits) if self.scoring == "sigmoid" else torch.softmax(logits, dim=-1)
        with torch.no_grad():
            choice = s.detach()
            if self.e_score_correction_bias is not None:
                choice = choice + self.e_score_correction_bias
            M, E = choice.shape
            if self.n_group > 1 and self.method in ("noaux_tc", "group_limited_greedy"):
                g = choice.view(M, self.n_group, E // self.n_group)
                if self.method == "noaux_tc":
                    gs = g.topk(2, dim=-1).values.sum(-1)
                else:
                    gs = g.max(dim=-1).values
                keep = gs.topk(self.topk_group, dim=-1).indices
                gmask = torch.ones_like(gs, dtype=torch.bool).scatter_(1, keep, False)
                choice = g.masked_fill(gmask.unsqueeze(-1), float("-inf")).view(M, E)
            idx = choice.topk(self.K, dim=-1).indices
        w = s.gather(1, idx)
        if self.norm_topk and self.K > 1:
            w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
        return s, idx, w * self.scaling


class MoE(nn.Module):
    def __init__(self, cfg, stats_sink):
        super().__init__()
        D, Im = cfg["hidden_size"], cfg["moe_intermediate_size"]
        self.E, self.K = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
        self.gate = Gate(cfg)
        self.experts = nn.ModuleList([MLP(D, Im) for _ in range(self.E)])
        S = cfg.get("n_shared_experts") or 0
        self.shared_experts = MLP(D, S * Im) if S > 0 else None
        self._sink = stats_sink       # list-like owner collecting (balance loss, load) per forward
        self.layer_index = None

    def forward(self, x):
        B, T, D = x.shape
        flat = x.reshape(B * T, D)
        s, idx, w = self.gate(flat)
        E, K = self.E, self.K
        M = B * T
        flat_idx = idx.reshape(-1)
        with torch.no_grad():
            load = torch.bincount(flat_idx, minlength=E)
            seq_of = torch.arange(M).repeat_interleave(K) // T
            cnt = torch.bincount(seq_of * E + flat_idx, minlength=B * E).view(B, E)
            f = cnt.float() * (E / (K * T))
        sp = s / s.sum(dim=-1, keepdim=True) if self.gate.scoring == "sigmoid" else s
        P = sp.view(B, T, E).mean(dim=1)
        bal = self._sink.alpha * (f * P).sum() / B
        self._sink.record(self.layer_index, bal, load, self.gate)

        order = torch.sort(flat_idx, stable=True).indices
        token_of = order // K
        w_sorted = w.reshape(-1)[order].unsqueeze(1)
        y = torch.zeros(M, D, dtype=torch.float32)
        start = 0
        for e, c in enumerate(load.tolist()):
            if c == 0:
                continue
            tok = token_of[start:start + c]
            ye = self.experts[e](flat.index_select(0, tok))
            y.index_add_(0, tok, ye.float() * w_sorted[start:start + c])
            start += c
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat).float()
        return y.view(B, T, D)


class DecoderLayer(nn.Module):
    def __init__(self, cfg, i, sink):
        super().__init__()
        eps = cfg.get("rms_norm_eps", 1e-6)
        self.input_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.self_attn = MLA(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], eps)
        if _is_moe_layer(cfg, i):
            self.mlp = MoE(cfg, sink)
            self.mlp.layer_index = i
        else:
            self.mlp = MLP(cfg["hidden_size"], cfg["intermediate_size"])

    def forward(self, x, rope):
        x = x + self.self_attn(self.input_layernorm(x), rope)
        return x + self.mlp(self.post_attention_layernorm(x))


class SharedHead(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.norm = RMSNorm(dim, eps)


class MTPLayer(DecoderLayer):
    def __init__(self, cfg, i, sink):
        super().__init__(cfg, i, sink)
        D, eps = cfg["hidden_size"], cfg.get("rms_norm_eps", 1e-6)
        self.enorm = RMSNorm(D, eps)
        self.hnorm = RMSNorm(D, eps)
        self.eh_proj = nn.Linear(2 * D, D, bias=False)
        self.shared_head = SharedHead(D, eps)


class _Inner(nn.Module):
    pass


class StatsSink:
    """Collects each MoE layer's balance loss and expert load during one forward."""

    def __init__(self, alpha):
        self.alpha = alpha
        self.items = []

    def record(self, layer, bal, load, gate):
        self.items.append((layer, bal, load, gate))


class DeepseekTrainModel(nn.Module):
    def __init__(self, cfg, alpha=0.01, mtp_lambda=0.3):
        super().__init__()
        self.cfg = cfg
        self.sink = StatsSink(alpha)
        self.mtp_lambda = mtp_lambda
        D, eps = cfg["hidden_size"], cfg.get("rms_norm_eps", 1e-6)
        Lm, Dm = cfg["num_hidden_layers"], _num_mtp(cfg)
        self.model = _Inner()
        self.model.embed_tokens = nn.Embedding(cfg["vocab_size"], D)
        layers = [DecoderLayer(cfg, i, self.sink) for i in range(Lm)]
        layers += [MTPLayer(cfg, Lm + k, self.sink) for k in range(Dm)]
        self.model.layers = nn.ModuleList(layers)
        self.model.norm = RMSNorm(D, eps)
        self.lm_head = nn.Linear(D, cfg["vocab_size"], bias=False)
        self.n_main, self.n_mtp = Lm, Dm
        self.inv_freq, self.softmax_scale = yarn_inv_freq_and_scale(cfg)
        self._rope_cache = {}

    def _rope(self, T):
        if T not in self._rope_cache:
            ang = torch.outer(torch.arange(T, dtype=torch.float32), self.inv_freq)
            cos = ang.cos().view(1, T, 1, -1)
            sin = ang.sin().view(1, T, 1, -1)
            mask = torch.full((T, T), float("-inf")).triu_(1)
            self._rope_cache[T] = (cos, sin, mask, self.softmax_scale)
        return self._rope_cache[T]

    def init_random(self, std=0.02, seed=0):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * std)
            for name, b in self.named_buffers():
                b.zero_()

    def forward(self, inputs, targets):
        """inputs, targets [B, T] (targets = inputs shifted by one). Returns a dict of losses and
        the per-MoE-layer stats of this forward."""
        self.sink.items = []
        B, T = inputs.shape
        V = self.cfg["vocab_size"]
        embed = self.model.embed_tokens
        x = embed(inputs)
        rope = self._rope(T)
        for layer in self.model.layers[:self.n_main]:
            x = layer(x, rope)
        hn = self.model.norm(x)
        logits = self.lm_head(hn)
        ce = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1))
        mtp_losses = []
        h_prev = hn
        for k in range(1, self.n_mtp + 1):
            Tk = T - k
            if Tk <= 0:
                break
            layer = self.model.layers[self.n_main + k - 1]
            emb = embed(targets[:, k - 1:T - 1])
            h = h_prev[:, :Tk]
            xm = layer.eh_proj(torch.cat((layer.enorm(emb), layer.hnorm(h)), dim=-1))
            y = layer(xm, self._rope(Tk))
            lg = self.lm_head(layer.shared_head.norm(y))
            mtp_losses.append(F.cross_entropy(lg.float().reshape(-1, V),
                                              targets[:, k:T].reshape(-1)))
            h_prev = y
        bal_terms = [it[1] for it in self.sink.items]
        balance = torch.stack(bal_terms).sum() if bal_terms else ce.new_zeros(())
        total = ce + balance
        mtp = None
        if mtp_losses:
            mtp = torch.stack(mtp_losses).mean()
            total = total + self.mtp_lambda * mtp
        return {"total": total, "ce": ce, "mtp_ce": mtp, "balance": balance,
                "moe": list(self.sink.items)}


def make_optimizer(model, lr=1e-3, wd=0.1):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


@torch.no_grad()
def bias_update(moe_items, gamma):
    for _, _, load, gate in moe_items:
        b = gate.e_score_correction_bias
        if b is None:
            continue
        lf = load.float()
        b.copy_(b + torch.sign(lf.mean() - lf) * gamma)


# --------------------------------------------------------------------------------------------
# Checkpoint loading (safetensors by hand: 8-byte LE header length, JSON header, raw data)
# --------------------------------------------------------------------------------------------

def _e4m3_table():
    t = np.zeros(256, dtype=np.float64)
    for c in range(256):
        s, e, m = c >> 7, (c >> 3) & 0xF, c & 7
        if e == 15 and m == 7:
            v = float("nan")
        elif e == 0:
            v = m / 8.0 * 2.0 ** -6
        else:
            v = (1 + m / 8.0) * 2.0 ** (e - 7)
        t[c] = -v if s else v
    return t.astype(np.float32)


def read_safetensors(path):
    """name -> numpy float32 / raw array (F8 as uint8) of one file."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        data = np.frombuffer(fh.read(), dtype=np.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[a:b]
        shape = info["shape"]
        dt = info["dtype"]
        if dt == "F32":
            arr = raw.view(np.float32).reshape(shape)
        elif dt == "BF16":
            arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
        elif dt == "F16":
            arr = raw.view(np.float16).astype(np.float32).reshape(shape)
        elif dt == "F8_E4M3":
            arr = raw.reshape(shape)          # codes, dequantized with the scale below
        else:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
        out[name] = (dt, arr)
    return out


def load_checkpoint(model, folder, cfg):
    idx_path = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(idx_path):
        with open(idx_path) as fh:
            files = sorted(set(json.load(fh)["weight_map"].values()))
    else:
        files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors in {folder}")
    raw = {}
    for f in files:
        raw.update(read_safetensors(os.path.join(folder, f)))
    block = (cfg.get("quantization_config") or {}).get("weight_block_size", [128, 128])
    table = _e4m3_table()
    tensors = {}
    for name, (dt, arr) in raw.items():
        if name.endswith("_scale_inv"):
            continue
        if dt == "F8_E4M3":
            sc = raw[name + "_scale_inv"][1]
            r, c = arr.shape
            full = np.repeat(np.repeat(sc, block[0], axis=0), block[1], axis=1)[:r, :c]
            arr = table[arr] * full
        tensors[name] = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))
    own = dict(model.named_parameters())
    own.update(dict(model.named_buffers()))
    Lm = cfg["num_hidden_layers"]
    tied = {}
    for k in range(_num_mtp(cfg)):
        tied[f"model.layers.{Lm + k}.embed_tokens.weight"] = "model.embed_tokens.weight"
        tied[f"model.layers.{Lm + k}.shared_head.head.weight"] = "lm_head.weight"
    missing = [n for n in own if n not in tensors]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    extra = [n for n in tensors if n not in own and n not in tied]
    if extra:
        print(f"note: ignoring {len(extra)} checkpoint tensors, e.g. {extra[:3]}", file=sys.stderr)
    with torch.no_grad():
        for n, t in own.items():
            if tuple(tensors[n].shape) != tuple(t.shape):
                raise ValueError(f"{n}: shape {tuple(tensors[n].shape)} != {tuple(t.shape)}")
            t.copy_(tensors[n])


# --------------------------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------------------------

class _Blob:
    def __init__(self, path):
        self.data = np.fromfile(path, dtype=np.uint8)

    def arr(self, ref):
        dt = {"f32": np.float32, "i32": np.int32}[ref["dtype"]]
        n = int(np.prod(ref["shape"])) if ref["shape"] else 1
        off = ref["offset"]
        return self.data[off:off + n * 4].view(dt).reshape(ref["shape"])

    def tensor_entry(self, e):
        if e["storage"] == "dense":
            return ("dense", self.arr(e))
        if e["storage"] == "rows":
            full = np.zeros(e["shape"], dtype=np.float32)
            full[self.arr(e["rows"])] = self.arr(e["values"])
            return ("dense", full)
        if e["storage"] == "sample":
            return ("sample", (self.arr(e["flat_indices"]), self.arr(e["values"])))
        raise ValueError(e["storage"])


def _global_grad_l2(model):
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()
                         if p.grad is not None))


def check_one(folder, verbose=True):
    with open(os.path.join(folder, "train_reference.json")) as fh:
        ref = json.load(fh)
    blob = _Blob(os.path.join(folder, "train_reference.bin"))
    ckpt = os.path.normpath(os.path.join(folder, ref["starting_checkpoint"]["path"]))
    with open(os.path.join(ckpt, "config.json")) as fh:
        cfg = json.load(fh)
    st = ref["settings"]
    lam = st["mtp_lambda"] if st["mtp_lambda"] is not None else 0.0
    gamma = st["bias_gamma"] if st["bias_gamma"] is not None else 0.0
    ad = st["adamw"]
    model = DeepseekTrainModel(cfg, alpha=st["balance_alpha"], mtp_lambda=lam)
    load_checkpoint(model, ckpt, cfg)
    opt = torch.optim.AdamW(
        [{"params": [p for p in model.parameters() if p.dim() >= 2],
          "weight_decay": ad["weight_decay"]},
         {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}],
        lr=ad["lr"], betas=(ad["beta1"], ad["beta2"]), eps=ad["eps"])
    names = dict(model.named_parameters())
    ref_names = [p["name"] for p in ref["parameters"]]
    assert sorted(ref_names) == sorted(names), "parameter sets differ from the reference"
    inputs = torch.from_numpy(blob.arr(ref["batch"]["inputs"]).astype(np.int64))
    targets = torch.from_numpy(blob.arr(ref["batch"]["targets"]).astype(np.int64))
    results = []   # (ok, printable line)
    name = os.path.basename(os.path.normpath(folder))

    def add(what, got, want, tol, rel=False, exact=False):
        if exact:
            ok = bool(np.array_equal(np.asarray(got), np.asarray(want)))
            results.append((ok, f"{what}: " + ("exact" if ok else f"{got} vs ref {want}")))
            return
        d = abs(got - want) / (abs(want) if rel else 1.0)
        results.append((d <= tol, f"{what}: {got:.6f} vs ref {want:.6f} "
                                  f"({'rel ' if rel else ''}diff {d:.2e}, tol {tol:g})"))

    gates = {layer.mlp.layer_index: layer.mlp.gate for layer in model.model.layers
             if isinstance(layer.mlp, MoE)}
    for k in range(4):
        out = model(inputs, targets)
        tr = ref["trajectory"][k]
        tl = tr["loss"]
        tol = 1e-4 if k == 0 else 1e-3
        tag = f"state{k}"
        add(f"{tag} total", out["total"].item(), tl["total"], tol)
        add(f"{tag} ce", out["ce"].item(), tl["ce"], tol)
        if out["mtp_ce"] is not None:
            add(f"{tag} mtp_ce", out["mtp_ce"].item(), tl["mtp_ce"], tol)
        add(f"{tag} balance", out["balance"].item(), tl["balance"], tol)
        for layer, bal, load, gate in out["moe"]:
            if k == 0:
                add(f"{tag} balance[{layer}]", bal.item(), tl["balance_per_layer"][str(layer)],
                    1e-6)
            add(f"{tag} load[{layer}]", load.numpy(), np.array(tr["load"][str(layer)]), 0,
                exact=True)
            if "bias_used" in tr and tr["bias_used"] is not None:
                bname = f"model.layers.{layer}.mlp.gate.e_score_correction_bias"
                add(f"{tag} bias_used[{layer}]", gate.e_score_correction_bias.numpy(),
                    np.array(tr["bias_used"][bname], dtype=np.float32), 0, exact=True)
        if k == 3:
            break
        opt.zero_grad(set_to_none=True)
        out["total"].backward()
        gl2 = _global_grad_l2(model)
        want_gl2 = ref["step0"]["grad_global_l2"] if k == 0 else tr["grad_global_l2"]
        add(f"{tag} grad_global_l2", gl2, want_gl2, 1e-4 if k == 0 else 1e-2, rel=True)
        if k == 0:
            worst, worst_name = 0.0, ""
            for pname, e in ref["step0"]["grads"].items():
                _, g_ref = blob.tensor_entry(e)
                g = names[pname].grad.numpy()
                r = float(np.linalg.norm(g - g_ref) / max(np.linalg.norm(g_ref), 1e-30))
                if r > worst:
                    worst, worst_name = r, pname
            results.append((worst <= 1e-4, f"{tag} per-tensor gradients, worst rel L2 error "
                                           f"{worst:.2e} ({worst_name}), tol 1e-4"))
        opt.step()
        bias_update(out["moe"], gamma)
        if ref.get("bias_updates"):
            for bname, ba in ref["bias_updates"][k].items():
                layer = int(bname.split(".")[2])
                add(f"step{k + 1} bias_update[{layer}]", gates[layer].e_score_correction_bias
                    .numpy(), np.array(ba["after"], dtype=np.float32), 0, exact=True)
        # parameter samples of p_{k+1}
        tp = ref["trajectory"][k + 1].get("params") or {}
        n_all, n_close, maxd = 0, 0, 0.0
        for pname, e in tp.items():
            if pname == "update_stats" or not isinstance(e, dict) or "storage" not in e:
                continue
            kind, val = blob.tensor_entry(e)
            p = names[pname].detach().numpy()
            if kind == "dense":
                d = np.abs(p - val).ravel()
            else:
                fi, vals = val
                d = np.abs(p.ravel()[fi] - vals)
            n_all += d.size
            n_close += int((d <= 1e-5).sum())
            maxd = max(maxd, float(d.max()))
        if n_all:
            frac = n_close / n_all
            results.append((frac >= 0.999 and maxd <= 2.5e-3,
                            f"p{k + 1} samples: {frac * 100:.2f}% of {n_all} within 1e-5 (need "
                            f"99.9%), max abs diff {maxd:.2e} (tol 2.5e-3)"))
    ok = all(r[0] for r in results)
    if verbose:
        print(f"== {name} ({cfg.get('model_type')}, checkpoint {ckpt})")
        for good, line in results:
            print(f"  {'ok ' if good else 'BAD'} {line}")
        print(f"  {'PASS' if ok else 'FAIL'} {name}")
    return ok


def run_check(folder):
    torch.set_num_threads(1)
    subs = sorted(d for d in os.listdir(folder)
                  if os.path.exists(os.path.join(folder, d, "train_reference.json")))
    if os.path.exists(os.path.join(folder, "train_reference.json")):
        subs = ["."]
    if not subs:
        sys.exit(f"error: no train_reference.json under {folder}")
    all_ok = True
    for s in subs:
        all_ok &= check_one(os.path.join(folder, s))
    print("ALL PASS" if all_ok else "SOME CHECKS FAILED")
    return 0 if all_ok else 1


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------

def run_bench(args):
    cfg_path = args.config or (os.path.join(args.model, "config.json") if args.model else None)
    if not cfg_path:
        sys.exit("error: give --config or --model (or --check)")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    if args.layers is not None:
        if args.model:
            sys.exit("error: --layers only with random init (no --model)")
        cfg["num_hidden_layers"] = args.layers
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = DeepseekTrainModel(cfg, alpha=args.balance_alpha, mtp_lambda=args.mtp_lambda)
    if args.model:
        load_checkpoint(model, args.model, cfg)
    else:
        model.init_random(std=cfg.get("initializer_range", 0.02), seed=args.seed)
    model.train()
    opt = make_optimizer(model, lr=args.lr)
    B, T = args.batch, args.seq
    g = torch.Generator().manual_seed(args.seed + 1)
    n_total = args.warmup + args.steps
    batches = [torch.randint(0, cfg["vocab_size"], (B, T + 1), generator=g)
               for _ in range(n_total)]
    bf16 = args.precision == "bf16"
    times = {"forward": [], "backward": [], "optimizer": []}
    losses = []
    for step in range(n_total):
        tok = batches[step]
        inputs, targets = tok[:, :T], tok[:, 1:]
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(inputs, targets)
        loss = out["total"]
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        bias_update(out["moe"], args.bias_gamma)
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        losses.append(loss.item())
        if step >= args.warmup:
            times["forward"].append(t1 - t0)
            times["backward"].append(t2 - t1)
            times["optimizer"].append(t3 - t2)
    ph = {k: (sum(v) / len(v) if v else float("nan")) for k, v in times.items()}
    step_s = ph["forward"] + ph["backward"] + ph["optimizer"]
    fpt = train_flops_per_token(cfg, T)
    n_params = sum(p.numel() for p in model.parameters())
    res = {
        "engine": "pytorch", "torch_version": torch.__version__,
        "model_type": cfg.get("model_type"), "config": cfg_path,
        "weights": args.model or "random", "precision": args.precision,
        "batch": B, "seq": T, "steps": args.steps, "warmup": args.warmup,
        "threads": args.threads, "parameters": n_params,
        "tokens_per_step": B * T, "train_flops_per_token": fpt,
        "step_s": step_s, "tokens_per_s": B * T / step_s,
        "gflops": fpt * B * T / step_s / 1e9,
        "phase_s": ph, "loss_first": losses[0], "loss_last": losses[-1],
        "blas": blas_library(),
    }
    if "/blas/libblas" in res["blas"]:
        print("warning: float32 GEMM runs on the netlib reference BLAS (slow, not a fair "
              "baseline); apt-get install -y libopenblas0-pthread", file=sys.stderr)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"pytorch {torch.__version__} {cfg.get('model_type')} ({n_params / 1e6:.2f} M "
              f"params, {res['weights']}), {args.precision}, B={B} T={T}, "
              f"{args.threads} thread(s), {args.steps} timed steps after {args.warmup} warmup")
        print(f"  tokens/s {res['tokens_per_s']:.1f}   GFLOP/s {res['gflops']:.2f}   "
              f"step {step_s * 1e3:.1f} ms (forward {ph['forward'] * 1e3:.1f}, backward "
              f"{ph['backward'] * 1e3:.1f}, optimizer {ph['optimizer'] * 1e3:.1f})")
        print(f"  train FLOPs/token {fpt:.4e}   loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        print(f"  BLAS: {res['blas']}")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.check:
        return run_check(args.check)
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
