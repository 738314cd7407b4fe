"""Greedy completions against a cluster, many at once: what clients saw.

  load.py URL KEY_FILE --prompts N --max_tokens M [--baseline FILE] [--record FILE]

Sends N distinct greedy completions concurrently (one thread each) and prints
one JSON line: how many ended 200, how many failed (status and message), and,
given a baseline of the same prompts from an undisturbed run, how many texts
differ. --record writes this run's texts as such a baseline.
"""
import argparse
import json
import threading
import time
import urllib.error
import urllib.request


def complete(url, key, prompt, max_tokens):
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, headers={
        "Content-Type": "application/json", "Authorization": "Bearer " + key})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)["choices"][0]["text"]
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")[:200]
    except Exception as error:  # connection reset, timeout: what a client sees
        return 0, str(error)[:200]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key_file")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max_tokens", type=int, default=200)
    parser.add_argument("--baseline")
    parser.add_argument("--record")
    args = parser.parse_args()
    key = open(args.key_file).read().split()[0]
    prompts = [f"Request {i}: latent attention over paged caches" for i in range(args.prompts)]
    results = [None] * len(prompts)
    start = time.time()

    def run(i):
        results[i] = complete(args.url, key, prompts[i], args.max_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r[0] == 200]
    failed = [r for r in results if r[0] != 200]
    summary = {"requests": len(prompts), "ok": len(ok), "failed": len(failed),
               "failures": sorted({f"{r[0]}: {r[1][:80]}" for r in failed}), "seconds": round(time.time() - start, 1)}
    if args.baseline:
        baseline = json.load(open(args.baseline))
        summary["altered"] = sum(1 for r, b in zip(results, baseline) if r[0] == 200 and r[1] != b)
    if args.record:
        json.dump([r[1] for r in results], open(args.record, "w"))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
