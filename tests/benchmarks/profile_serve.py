"""Profile ``streamdrift serve`` on the benchmark's data with py-spy; print where the time goes.

    .venv/bin/python tests/benchmarks/profile_serve.py [--events 1000000] [--mixed] [--raw /tmp/serve.txt]

Starts the embedded broker, produces the events, starts serve under ``py-spy record``
(``--format raw``: collapsed stacks, 200 samples/s, ``--nonblocking``: the sampler never
pauses the process), stops it once every event is counted, and prints the functions with
the largest self time and inclusive time, as % of the samples in which serve's main thread
was busy in the consumer loop. ``--raw`` keeps the collapsed stacks (speedscope and
flamegraph.pl read them). py-spy without ``--native`` charges time spent in C (msgspec,
numpy, librdkafka) and in the garbage collector to the Python line that called it.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.benchmarks import bench_serve  # noqa: E402
from tests.benchmarks.bench_common import MIXED, NUMERIC_ONLY, columns, encode_events, fresh_topic, produce  # noqa: E402


def summarize(raw: Path, top: int = 25) -> str:
    """Self and inclusive % per function from py-spy's collapsed stacks (main thread, in ``run``)."""
    self_t: collections.Counter[str] = collections.Counter()
    self_line: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any(".run (stream/service/consumer.py" in f for f in frames):
            continue
        n = int(count)
        total += n
        funcs = [f.split(":")[0] + ")" if ":" in f else f for f in frames]
        self_t[funcs[-1]] += n
        # the innermost frame in streamdrift's own code: which line of ours the time is under
        ours = [f for f in frames if "(stream/" in f or "(detectors/" in f]
        if ours:
            self_line[ours[-1]] += n
        for f in set(funcs):
            incl[f] += n
    if total == 0:
        return "no samples in the consumer loop (is py-spy allowed to ptrace?)"
    lines = [f"{total} samples in the consumer loop", "", "| self % | function |", "|---:|---|"]
    lines += [f"| {100 * c / total:.1f} | `{f}` |" for f, c in self_t.most_common(top)]
    lines += ["", "| inclusive % | function |", "|---:|---|"]
    lines += [f"| {100 * c / total:.1f} | `{f}` |" for f, c in incl.most_common(top)]
    lines += ["", "| % under this line | innermost streamdrift line |", "|---:|---|"]
    lines += [f"| {100 * c / total:.1f} | `{f}` |" for f, c in self_line.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--mixed", action="store_true", help="the variant with 5 categoricals and a segment")
    p.add_argument("--raw", help="keep the collapsed stacks here (default: a temp file)")
    a = p.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        raise SystemExit("py-spy not found: pip install -e '.[bench]'")
    variant = MIXED if a.mixed else NUMERIC_ONLY
    from stream.demo.broker import EmbeddedBroker

    with tempfile.TemporaryDirectory(prefix="streamdrift-profile-") as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        reference = bench_serve.build_reference(work, variant)
        topic = fresh_topic(broker.bootstrap, "profile")
        produce(broker.bootstrap, topic, encode_events(columns(a.events, 77, variant), variant))
        port = bench_serve.free_port()
        config = bench_serve.write_config(work, reference, variant, broker.bootstrap, topic, port, "profile")
        raw = Path(a.raw) if a.raw else work / "serve.txt"
        serve_cmd = [sys.executable, "-m", "stream.cli", "--log-level", "WARNING", "serve", "--config", str(config)]
        cmd = [pyspy, "record", "--format", "raw", "--rate", "200", "--nonblocking", "-o", str(raw), "--", *serve_cmd]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.perf_counter()
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                raise SystemExit(f"py-spy/serve exited early:\n{err}")
            m = bench_serve.scrape(port)
            if m and m.get("streamdrift_events_total", 0) >= a.events:
                break
            if time.perf_counter() - t0 > 600:
                raise SystemExit("serve did not finish in 600 s")
            time.sleep(0.2)
        # SIGTERM the serve process (py-spy's child), then py-spy writes its output and exits
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for c in children:
            subprocess.run(["kill", "-TERM", c], check=True)
        proc.wait(timeout=120)
        print(summarize(raw))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())
