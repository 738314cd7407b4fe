#!/usr/bin/env python3
"""Baseline for our MLA decode kernel: plain PyTorch absorbed MLA decode.

Same shapes and figures as flashmla_bench.cu: one query token per sequence,
`heads` query heads against one latent KV head of 576 (512 c_kv + 64 k_rope),
dv 512, bf16, a paged cache of 64-token blocks in random block order, every
sequence `context` tokens long. One call, eagerly:

    kv     = pool[block_table].view(b, L, 576)          # gather the pages
    scores = (q @ kv^T).float() * scale                 # bf16 matmul, fp32 from here
    probs  = softmax(scores, -1)                        # float32
    out    = probs.bf16() @ kv[..., :512]               # [b, h, 512]

(masking of positions past each sequence's length only when lengths differ
from the padded length: the grid's lengths are multiples of 64, the check's
are not.) Time per call: CUDA events over back-to-back calls after warm-up,
median of 3 repetitions; consecutive calls rotate over disjoint cache regions
and queries until --rotate_mb MiB is touched. TB/s = (batch*context*576*2 +
queries + outputs) / time; TFLOP/s = 2*heads*(576+512)*batch*context / time.
Also: device-to-device copy (read + write) and a bf16 8192^3 matmul.
CSV to --csv, else $OUT/torch.csv when OUT is set.

    python3 kernels/cuda/flashmla_baseline/torch_mla_decode.py [--heads 128,16]
        [--batches 1,2,...,256] [--contexts 1024,...,65536] [--max_cache_gb 40]
"""
import argparse
import math
import os
import sys
import time

import torch

D, DV, PAGE = 576, 512, 64
DEVICE = "cuda"  # --device cpu: a slow smoke test of this script on a machine without a GPU


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def empty_cache():
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def parse_list(s):
    return [int(x) for x in s.split(",") if x]


def mla_decode(q, pool, block_table, seqlens, scale, need_mask):
    """q [b, h, 576] bf16, pool [blocks, 64, 576] bf16, block_table [b, nbps] int64,
    seqlens [b] int64 (used when need_mask). Returns [b, h, 512] bf16."""
    b = q.shape[0]
    nbps = block_table.shape[1]
    kv = pool[block_table].view(b, nbps * PAGE, D)
    scores = torch.matmul(q, kv.transpose(1, 2)).float().mul_(scale)
    if need_mask:
        pos = torch.arange(nbps * PAGE, device=q.device)
        scores.masked_fill_((pos[None, :] >= seqlens[:, None])[:, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    del scores
    return torch.matmul(probs.to(torch.bfloat16), kv[..., :DV])


def reference(q, pool, block_table, seqlens_list, scale):
    """float64, one sequence at a time: (out [b, h, 512], lse [b, h])."""
    outs, lses = [], []
    for i, n in enumerate(seqlens_list):
        nb = (n + PAGE - 1) // PAGE
        kv = pool[block_table[i, :nb]].reshape(nb * PAGE, D)[:n].double()
        s = (q[i].double() @ kv.T) * scale
        lses.append(torch.logsumexp(s, dim=-1))
        outs.append(torch.softmax(s, dim=-1) @ kv[:, :DV])
    return torch.stack(outs), torch.stack(lses)


def time_ms(fn, iters):
    if DEVICE != "cuda":
        t = time.perf_counter()
        for i in range(iters):
            fn(i)
        return (time.perf_counter() - t) * 1e3 / iters
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(iters):
        fn(i)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def copy_tbps(n=1 << 29):  # bf16 elements: 1 GiB
    a = torch.ones(n, dtype=torch.bfloat16, device=DEVICE)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ms = time_ms(lambda i: b.copy_(a), 20)
    del a, b
    return 2 * 2 * n / (ms * 1e-3) / 1e12


def gemm_tflops(n=8192):
    a = torch.empty(n, n, dtype=torch.bfloat16, device=DEVICE).uniform_(-1, 1)
    b = torch.empty(n, n, dtype=torch.bfloat16, device=DEVICE).uniform_(-1, 1)
    c = torch.empty(n, n, dtype=torch.bfloat16, device=DEVICE)
    for _ in range(3):
        torch.matmul(a, b, out=c)
    ms = time_ms(lambda i: torch.matmul(a, b, out=c), 10)
    del a, b, c
    return 2 * n**3 / (ms * 1e-3) / 1e12


class Case:
    """`replicas` block tables into disjoint pool regions (random block order) and queries."""

    def __init__(self, pool, batch, heads, seqlens, replicas, gen):
        self.batch, self.heads, self.replicas = batch, heads, replicas
        self.seqlens_list = list(seqlens)
        nbps = max(1, (max(seqlens) + PAGE - 1) // PAGE)
        self.blocks_per_seq = nbps
        blocks = batch * nbps
        assert blocks * replicas <= pool.shape[0], (blocks, replicas, pool.shape[0])
        self.block_tables = [
            (torch.randperm(blocks, device=DEVICE, generator=gen) + r * blocks).view(batch, nbps)
            for r in range(replicas)
        ]
        self.q = torch.empty(replicas, batch, heads, D, dtype=torch.bfloat16, device=DEVICE).uniform_(
            -1, 1, generator=gen)
        self.seqlens = torch.tensor(seqlens, dtype=torch.int64, device=DEVICE)
        self.need_mask = any(n != nbps * PAGE for n in seqlens)

    def call(self, pool, r, scale):
        return mla_decode(self.q[r], pool, self.block_tables[r], self.seqlens, scale, self.need_mask)


def check(pool, heads, seqlens, scale, gen, what):
    c = Case(pool, len(seqlens), heads, seqlens, 1, gen)
    out = c.call(pool, 0, scale).double()
    ref, _ = reference(c.q[0], pool, c.block_tables[0], seqlens, scale)
    rel = ((out - ref).norm() / ref.norm()).item()
    max_abs = (out - ref).abs().max().item()
    ok = rel < 1e-2
    print(f"check {what:<26} heads={heads:3d} batch={len(seqlens):3d}: out rel L2 err {rel:.2e} "
          f"(max abs err {max_abs:.2e}, max |ref| {ref.abs().max().item():.2e}): {'PASS' if ok else 'FAIL'}",
          flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", default="128,16")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768,65536")
    ap.add_argument("--max_cache_gb", type=float, default=40)
    ap.add_argument("--target_ms", type=float, default=20)
    ap.add_argument("--rotate_mb", type=float, default=512)
    ap.add_argument("--softmax_scale", type=float, default=1 / math.sqrt(192))
    ap.add_argument("--skip_check", action="store_true")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script (tiny shapes)")
    ap.add_argument("--csv", default=os.path.join(os.environ["OUT"], "torch.csv") if os.environ.get("OUT") else "")
    args = ap.parse_args()
    heads_list, batches, contexts = parse_list(args.heads), parse_list(args.batches), parse_list(args.contexts)
    scale = args.softmax_scale
    global DEVICE
    DEVICE = args.device

    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        name, sms = props.name, props.multi_processor_count
        print(f"device: {name}, sm_{props.major}{props.minor}, {sms} SMs, {props.total_memory / 2**30:.1f} GiB; "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    else:
        name, sms = DEVICE, 0
        print(f"device: {DEVICE} (smoke test); torch {torch.__version__}", flush=True)

    shapes, skipped = [], []
    pool_blocks = 2048
    for h in heads_list:
        for b in batches:
            for ctx in contexts:
                blocks = b * ((ctx + PAGE - 1) // PAGE)
                if blocks * PAGE * D * 2 / 1e9 > args.max_cache_gb:
                    skipped.append((h, b, ctx))
                    continue
                shapes.append((h, b, ctx))
                pool_blocks = max(pool_blocks, blocks)

    with torch.inference_mode():
        copy_n, gemm_n = (1 << 29, 8192) if DEVICE == "cuda" else (1 << 20, 256)
        ctbps = copy_tbps(copy_n)
        gtflops = gemm_tflops(gemm_n)
        print(f"device-to-device copy: {ctbps:.3f} TB/s (read + write, {copy_n * 2 / 2**20:.0f} MiB)")
        print(f"GEMM: {gtflops:.1f} TFLOP/s (torch.matmul bf16 {gemm_n}x{gemm_n}x{gemm_n}, random data)", flush=True)
        empty_cache()

        gen = torch.Generator(device=DEVICE)
        gen.manual_seed(0)
        pool = torch.empty(pool_blocks, PAGE, D, dtype=torch.bfloat16, device=DEVICE).uniform_(-1, 1, generator=gen)
        sync()
        print(f"cache pool: {pool_blocks} blocks of 64 x 576 bf16 ({pool.numel() * 2 / 1e9:.2f} GB)", flush=True)

        if not args.skip_check:
            ok = True
            for h in heads_list:
                ok &= check(pool, h, [64, 777, 2113, 4096], scale, gen, "ragged (4 long, masked)")
                ok &= check(pool, h, [1024, 1024, 1024], scale, gen, "uniform (3 x 1024)")
            if not ok:
                print("torch MLA decode correctness check FAILED", file=sys.stderr)
                sys.exit(1)

        csv = open(args.csv, "w") if args.csv else None
        if csv:
            csv.write(f"# device={name} sms={sms} copy_tbps={ctbps:.3f} "
                      f"gemm_tflops={gtflops:.1f} softmax_scale={scale:.6f} rotate_mb={args.rotate_mb:.0f} "
                      f"torch={torch.__version__}\n")
            csv.write("baseline,heads,batch,context,cache_gb,num_sm_parts,replicas,iters,us_per_call,tbps,tflops,"
                      "us_graph,tbps_graph,tflops_graph,us_meta\n")
            for h, b, ctx in skipped:
                csv.write(f"torch,{h},{b},{ctx},,,,,skipped(cache>{args.max_cache_gb:.0f}GB),,,,,,\n")
            csv.flush()
        for h, b, ctx in skipped:
            print(f"skip heads={h} batch={b} context={ctx}: cache above {args.max_cache_gb:.0f} GB")

        print(f"\n{'heads':>6} {'batch':>6} {'context':>8} {'cache_GB':>9} {'rot':>4} {'iters':>6} "
              f"{'us/call':>10} {'TB/s':>8} {'TFLOP/s':>8}", flush=True)
        t_start = time.time()
        for h, b, ctx in shapes:
            blocks = b * ((ctx + PAGE - 1) // PAGE)
            cache_bytes = blocks * PAGE * D * 2
            replicas = max(1, min(math.ceil(args.rotate_mb * 2**20 / cache_bytes), pool_blocks // blocks))
            row = None
            c = None
            try:
                c = Case(pool, b, h, [ctx] * b, replicas, gen)
                for i in range(2):
                    c.call(pool, i % replicas, scale)
                sync()
                est = time_ms(lambda i: c.call(pool, i % replicas, scale), 2)
                iters = int(min(max(args.target_ms / max(est, 1e-4), 3), 2000))
                ts = sorted(time_ms(lambda i: c.call(pool, i % replicas, scale), iters) for _ in range(3))
                us = ts[1] * 1e3
                nbytes = b * ctx * D * 2 + b * h * (D + DV) * 2
                flops = 2 * h * (D + DV) * b * ctx
                tbps, tflops = nbytes / (us * 1e-6) / 1e12, flops / (us * 1e-6) / 1e12
                print(f"{h:6d} {b:6d} {ctx:8d} {cache_bytes / 1e9:9.3f} {replicas:4d} {iters:6d} "
                      f"{us:10.1f} {tbps:8.3f} {tflops:8.1f}", flush=True)
                row = (f"torch,{h},{b},{ctx},{cache_bytes / 1e9:.4f},,{replicas},{iters},{us:.2f},{tbps:.4f},"
                       f"{tflops:.2f},,,,\n")
            except torch.cuda.OutOfMemoryError:
                print(f"{h:6d} {b:6d} {ctx:8d} {cache_bytes / 1e9:9.3f}  out of GPU memory: skipped", flush=True)
                row = f"torch,{h},{b},{ctx},{cache_bytes / 1e9:.4f},,,,skipped(oom),,,,,,\n"
            del c
            empty_cache()
            if csv:
                csv.write(row)
                csv.flush()
        if csv:
            csv.close()
        print(f"done ({time.time() - t_start:.0f} s for the grid)")


if __name__ == "__main__":
    main()
