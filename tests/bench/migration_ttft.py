#!/usr/bin/env python3
"""Time to first token of a request whose long prefix another engine group
computed: migrated (the prefix's latent KV moves over) versus recomputed (the
first group's own prefill of the same prefix), against a running cluster of
two groups started with --migration=always --cache_affinity_slack=0.

For each prefix length: request A (the prefix) lands on the first group and
is timed (prefill from scratch); a long request then keeps that group busy;
request B (the prefix plus a few tokens) is routed to the idle group, which
receives the prefix's KV and computes only the rest. Both ask for one token,
so their latency is their time to first token. Standard library only."""
import argparse
import json
import random
import threading
import time
import urllib.request


def complete(url, ids, max_tokens):
    body = json.dumps({"prompt": ids, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    start = time.monotonic()
    with urllib.request.urlopen(request, timeout=1800) as response:
        reply = json.load(response)
    return time.monotonic() - start, reply


def metric(url, name):
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--lengths", default="4096,16384,65536,131072")
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--csv", default="")
    args = parser.parse_args()
    rng = random.Random(1)
    rows = ["prefix_tokens,recomputed_ttft_s,migrated_ttft_s,migrated_bytes"]
    print(f"{'prefix':>8} {'recomputed s':>13} {'migrated s':>11} {'speed-up':>9} {'MB moved':>9}")
    for length in [int(x) for x in args.lengths.split(",")]:
        prefix = [rng.randrange(10, args.vocab) for _ in range(length)]
        recomputed, _ = complete(args.url, prefix + [7], 1)
        busy = threading.Thread(target=complete, args=(args.url, [3, 1, 4], 1500))
        busy.start()
        time.sleep(1.0)
        moved_before = metric(args.url, "mlaserve_kv_transfer_bytes_total")
        migrated, reply = complete(args.url, prefix + [rng.randrange(10, args.vocab) for _ in range(16)], 1)
        moved = metric(args.url, "mlaserve_kv_transfer_bytes_total") - moved_before
        cached = reply["usage"]["prompt_tokens_details"]["cached_tokens"]
        print(f"{length:>8} {recomputed:>13.3f} {migrated:>11.3f} {recomputed / migrated:>8.1f}x {moved / 1e6:>9.1f}"
              f"   (B served {cached} tokens from cache)", flush=True)
        rows.append(f"{length},{recomputed},{migrated},{moved}")
        busy.join()
    if args.csv:
        open(args.csv, "w").write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
