"""The front end under attack: slowloris sockets and a flood of requests, with /health timed throughout.

  flood.py URL KEY_FILE [--slow 500] [--requests 2000] [--max_tokens 16]

Keeps --slow sockets sending request headers a line a second and never ending
them (each cut off by the server is opened again), sends --requests greedy
completions at once, each on a connection of its own, and asks /health every
100 ms until the last completion is answered. Prints one JSON line: the
completions' statuses (connection errors as 0), the slowest and median /health
answers and how many were not 200, and how many slow sockets the server cut
off with 408.
"""
import argparse
import asyncio
import json
import multiprocessing
import resource
import statistics
import time
import urllib.parse


async def exchange(host, port, request, timeout):
    """Sends one request on a new connection; returns (status, seconds), status 0 on a connection error."""
    start = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            writer.write(request)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout)
            await asyncio.wait_for(reader.read(), timeout)  # Connection: close: the rest of the response
        finally:
            writer.close()
        return int(line.split()[1]), time.monotonic() - start
    except (OSError, asyncio.TimeoutError, IndexError, ValueError):
        return 0, time.monotonic() - start


async def slowloris(host, port, done, cut):
    """One slow client: a header line a second, never the end of the headers."""
    while not done.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(1)
            continue
        try:
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            while not done.is_set():
                await writer.drain()
                try:
                    answer = await asyncio.wait_for(reader.read(64), 1.0)
                    if answer.startswith(b"HTTP/1.1 408"):
                        cut.append(1)
                    break  # answered or closed: open another
                except asyncio.TimeoutError:
                    writer.write(b"X-Slow: a\r\n")
        except OSError:
            pass
        finally:
            writer.close()


def poll_health(host, port, stop, out):
    """Asks /health every 100 ms until `stop`; puts the list of (status, seconds) on `out`."""
    request = f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    answers = []

    async def poll():
        while not stop.is_set():
            answers.append(await exchange(host, port, request, 10))
            await asyncio.sleep(0.1)

    asyncio.run(poll())
    out.put(answers)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key_file")
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--max_tokens", type=int, default=16)
    args = parser.parse_args()
    # A socket per client: more than the usual soft limit of 1024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.slow + args.requests + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))
    url = urllib.parse.urlparse(args.url)
    host, port = url.hostname, url.port
    key = open(args.key_file).read().split()[0]

    done = asyncio.Event()
    cut = []
    slow = [asyncio.create_task(slowloris(host, port, done, cut)) for _ in range(args.slow)]
    await asyncio.sleep(2)  # the slow sockets are open before the flood

    # /health is timed from a process of its own, so that this one's load
    # (thousands of sockets on one event loop) does not delay its clock.
    stop_polling = multiprocessing.Event()
    polls = multiprocessing.Queue()
    poller = multiprocessing.Process(target=poll_health, args=(host, port, stop_polling, polls))
    poller.start()

    def completion(i):
        body = json.dumps({"prompt": f"Flood {i}", "max_tokens": args.max_tokens, "temperature": 0}).encode()
        return (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode() + body

    start = time.monotonic()
    results = await asyncio.gather(*(exchange(host, port, completion(i), 300) for i in range(args.requests)))
    seconds = time.monotonic() - start
    done.set()
    stop_polling.set()
    health = polls.get()
    poller.join()
    for task in slow:
        task.cancel()
    await asyncio.gather(*slow, return_exceptions=True)

    statuses = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    latencies = [s for _, s in health]
    print(json.dumps({
        "requests": args.requests, "statuses": statuses, "seconds": round(seconds, 1),
        "health_polls": len(health), "health_not_200": sum(1 for status, _ in health if status != 200),
        "health_max_s": round(max(latencies), 3), "health_median_s": round(statistics.median(latencies), 3),
        "slow_sockets": args.slow, "slow_cut_408": len(cut)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
