"""Attack benchmark of `keras-cgd serve` on loopback: one client floods, 16 good clients go on.

Exports `cgd_tiny` (64 × 64) to a temporary directory and starts `keras-cgd serve` with
its default limits on 127.0.0.1 in a subprocess. Then, in one run:

1. baseline: 16 well-behaved clients send `--requests` requests each (4 JPEGs per
   request) and their latencies are recorded;
2. attack: the same 16 clients again, while one more client sends, in a loop until
   they finish, the 20,000 × 1×1-PNG request (`{"instances": [{"b64": ...}] × 20000}`,
   2 MB) and malformed bodies (broken JSON, WebP, a bad chunk header, a short body);
3. after: the server idles 2 s;
4. burst: 8 clients send 4 large valid requests each (`--burst_images` JPEGs of
   1500 × 1500 per request), then the server idles 2 s.

The server's resident memory (VmRSS from /proc) is sampled every 20 ms throughout.
Prints ONE JSON line (and writes `benchmarks/results/serving_attack.json`):

    flood_status, flood_latency_ms_{first,median,max} (first = on an idle server),
    flood_requests, malformed_statuses, good_errors_{baseline,attack},
    good_p50_ms_*, good_p99_ms_{baseline,attack}, p99_ratio (attack / baseline),
    rss_mib_{idle,baseline_peak,attack_peak,after_attack,burst_peak,after_burst}.

Usage: python benchmarks/serving_attack.py [--requests 12] [--clients 16]
"""

import argparse
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, ROOT)

PREDICT = "/v1/models/cgd:predict"


def _encode(array, fmt, **options):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **options)
    return buf.getvalue()


def _b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class _RssSampler(threading.Thread):
    """Samples a process's RSS every `interval` seconds; `peak(since)` over a phase."""

    def __init__(self, pid, interval=0.02):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples = []  # (monotonic time, MiB)
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), _rss_mib(self.pid)))
            time.sleep(self.interval)

    def peak(self, start, end):
        values = [m for t, m in self.samples if start <= t <= end]
        return max(values) if values else float("nan")


def _raw(port, data, timeout=60.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        response = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                response += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else None


def _good_clients(url, payloads, clients, requests_per_client):
    """Run the well-behaved clients; returns (latencies in ms, error count)."""
    import requests

    latencies, errors = [], [0]
    lock = threading.Lock()

    def client(i):
        session = requests.Session()
        for k in range(requests_per_client):
            t0 = time.perf_counter()
            try:
                r = session.post(url + PREDICT, data=payloads[(i + k) % len(payloads)],
                                 timeout=120)
                ok = r.status_code == 200 and "predictions" in r.json()
            except requests.RequestException:
                ok = False
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                latencies.append(dt)
                errors[0] += 0 if ok else 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.array(latencies), errors[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=12, help="requests per good client")
    parser.add_argument("--burst_images", type=int, default=8,
                        help="1500 x 1500 JPEGs per burst request")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results",
                                                         "serving_attack.json"))
    args = parser.parse_args()

    import requests

    import keras_cgd
    from keras_cgd.export import export_saved_model

    rng = np.random.RandomState(0)
    payloads = [json.dumps({"instances": [
        _b64(_encode(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG"))
        for _ in range(4)]}) for _ in range(8)]
    flood = json.dumps({"instances": [_b64(_encode(np.zeros((1, 1, 3), np.uint8), "PNG"))]
                        * 20000}).encode()
    webp = json.dumps({"instances": [_b64(_encode(np.zeros((16, 16, 3), np.uint8), "WEBP"))]})
    big = np.clip(rng.normal(128, 40, (1500, 1500, 3)), 0, 255).astype(np.uint8)
    burst = json.dumps({"instances": [_b64(_encode(np.roll(big, 7 * i, axis=1), "JPEG",
                                                   quality=90))
                                      for i in range(args.burst_images)]})

    work = tempfile.mkdtemp(prefix="keras_cgd_bench_")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = None
    try:
        export_saved_model(keras_cgd.build_model("cgd_tiny", num_classes=5),
                           os.path.join(work, "cgd"))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from keras_cgd.cli import main; sys.exit(main())",
             "serve", work, "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        deadline = time.monotonic() + 300
        while True:
            try:
                if requests.post(url + PREDICT, data=payloads[0], timeout=10).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.25)
        for p in payloads:  # warm-up
            requests.post(url + PREDICT, data=p, timeout=60)
        sampler = _RssSampler(proc.pid)
        sampler.start()
        time.sleep(0.5)
        rss_idle = _rss_mib(proc.pid)

        t0 = time.perf_counter()
        first = requests.post(url + PREDICT, data=flood, timeout=120)
        flood_first_ms = (time.perf_counter() - t0) * 1000

        phase = time.monotonic()
        baseline, baseline_errors = _good_clients(url, payloads, args.clients, args.requests)
        baseline_end = time.monotonic()

        stop = threading.Event()
        flood_ms, flood_statuses, malformed = [], [], {}
        head = b"POST /v1/models/cgd:predict HTTP/1.1\r\nHost: x\r\n"
        bad = [
            ("broken JSON", lambda: requests.post(url + PREDICT, data=b'{"instances": [',
                                                  timeout=30).status_code),
            ("WebP", lambda: requests.post(url + PREDICT, data=webp, timeout=30).status_code),
            ("bad chunk header",
             lambda: _raw(port, head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")),
            ("short body", lambda: _raw(port, head + b"Content-Length: 900\r\n\r\n{\"inst")),
        ]

        def attacker():
            session = requests.Session()
            k = 0
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    status = session.post(url + PREDICT, data=flood, timeout=120).status_code
                except requests.RequestException as e:
                    status = repr(e)
                flood_ms.append((time.perf_counter() - t) * 1000)
                flood_statuses.append(status)
                name, send = bad[k % len(bad)]
                k += 1
                if name == "short body":  # holds one thread until the request timeout
                    threading.Thread(target=lambda: malformed.setdefault(name, send()),
                                     daemon=True).start()
                else:
                    malformed.setdefault(name, send())

        attack_start = time.monotonic()
        thread = threading.Thread(target=attacker, daemon=True)
        thread.start()
        attacked, attack_errors = _good_clients(url, payloads, args.clients, args.requests)
        stop.set()
        thread.join(timeout=120)
        attack_end = time.monotonic()
        time.sleep(2.0)
        rss_after_attack = _rss_mib(proc.pid)

        burst_start = time.monotonic()
        burst_latencies, burst_errors = _good_clients(url, [burst], 8, 4)
        burst_end = time.monotonic()
        time.sleep(2.0)
        rss_after_burst = _rss_mib(proc.pid)
        sampler.stop.set()
        sampler.join()
        alive = proc.poll() is None
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)

    def pct(values, q):
        return round(float(np.percentile(values, q)), 1)

    result = {
        "benchmark": "serving_attack",
        "clients": args.clients,
        "requests_per_client": args.requests,
        "flood_status": first.status_code,
        "flood_error": first.json().get("error", "")[:120],
        "flood_latency_ms_first": round(flood_first_ms, 1),
        "flood_latency_ms_median": pct(flood_ms, 50),
        "flood_latency_ms_max": round(max(flood_ms), 1),
        "flood_requests": len(flood_ms),
        "flood_statuses": sorted(set(map(str, flood_statuses))),
        "malformed_statuses": malformed,
        "good_errors_baseline": baseline_errors,
        "good_errors_attack": attack_errors,
        "good_p50_ms_baseline": pct(baseline, 50),
        "good_p50_ms_attack": pct(attacked, 50),
        "good_p99_ms_baseline": pct(baseline, 99),
        "good_p99_ms_attack": pct(attacked, 99),
        "p99_ratio": round(float(np.percentile(attacked, 99) / np.percentile(baseline, 99)), 2),
        "burst_requests": len(burst_latencies),
        "burst_errors": burst_errors,
        "burst_image_px": 1500,
        "burst_images_per_request": args.burst_images,
        "rss_mib_idle": round(rss_idle, 1),
        "rss_mib_baseline_peak": round(sampler.peak(phase, baseline_end), 1),
        "rss_mib_attack_peak": round(sampler.peak(attack_start, attack_end), 1),
        "rss_mib_after_attack": round(rss_after_attack, 1),
        "rss_mib_burst_peak": round(sampler.peak(burst_start, burst_end), 1),
        "rss_mib_after_burst": round(rss_after_burst, 1),
        "server_alive": alive,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    line = json.dumps(result)
    print(line)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
