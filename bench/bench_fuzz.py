"""10,000 hypothesis-fuzzed requests on every route of the backend: no 5xx, no secret or path shown, flat memory.

    .venv/bin/python bench/bench_fuzz.py [--examples 10000] [--server gunicorn|dev] [--seed 0]

The backend runs as it is deployed, in a process of its own (``hali serve``: gunicorn with 1 worker x 4 threads, or
``--dev``, Flask's server), with basic auth and the webhook secret on, on a real redis-server that needs a password,
with a data dir under /tmp holding a preprocessed slide, a model and a dashboard snapshot (``bench/fuzzing.py``),
and AWS keys in its environment. Every route of the app's ``url_map`` gets requests: mostly its own methods, with
good credentials mostly, Label Studio payloads with parts replaced by fuzz, arbitrary JSON, raw bytes, 100,000-deep
nesting, wrong content types and methods. Each answer is checked for:

- a 5xx status;
- a secret (the basic-auth password, the webhook secret, the Redis password and URL, the Label Studio API key,
  the AWS keys) or a filesystem path (the data dir, the files root, /tmp, /work, /home, /root, /var) in the body
  that the request did not send itself.

It prints the answers per route and status, every problem found (the first 20), and the serving process's RSS
(the gunicorn worker's, or the dev server's) at start, after the first 1,000 requests, every 5,000, and at the end.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from hypothesis import HealthCheck, Phase, given, seed, settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import benchutil
from bench.fuzzing import FuzzRequest, World, build_world, problems, requests_on, route_rules
from scripts import services

SECRETS = {"password": "fuzz-basic-pw-5b1e", "webhook": "fuzz-hook-secret-93ac", "redis": "fuzz-redis-pw-77d0",
           "ls_key": "fuzzlskey" + "0" * 31, "aws_id": "AKIA" + "FUZZ" * 3 + "0000", "aws_secret": "fuzzAwsSecret/ab+cd0123"}


def main() -> int:
    args = _parse_args()
    print(benchutil.header("Fuzzed requests on every backend route", " ".join(["bench/bench_fuzz.py", *sys.argv[1:]])),
          flush=True)
    with tempfile.TemporaryDirectory(prefix="hali-fuzz-") as tmp:
        root, redis_port = Path(tmp), services.free_port()
        redis_proc = services.start_redis(redis_port, root / "redis")
        try:
            _set_redis_password(redis_port)
            redis_url = f"redis://:{SECRETS['redis']}@{services.LOOPBACK}:{redis_port}/0"
            secrets = tuple(SECRETS.values()) + (redis_url, f"{services.LOOPBACK}:{redis_port}")
            world = build_world(root / "data", root / "files", secrets, SECRETS["password"], SECRETS["webhook"])
            ok = _fuzz(root, redis_url, world, args)
        finally:
            services.stop_process(redis_proc)
    print(benchutil.footer())
    return 0 if ok else 1


def _set_redis_password(port: int) -> None:
    from redis import Redis

    Redis(port=port).config_set("requirepass", SECRETS["redis"])


def _fuzz(root: Path, redis_url: str, world: World, args: argparse.Namespace) -> bool:
    from ml_backend.http.app import create_app
    from ml_backend.settings import BackendSettings

    env = {"HALI_DATA_DIR": str(root / "data"), "HALI_LS_FILES_ROOT": str(root / "files"), "HALI_REDIS_URL": redis_url,
           "HALI_LS_URL": "http://127.0.0.1:9", "HALI_LS_API_KEY": SECRETS["ls_key"],
           "HALI_BACKEND_PASSWORD": SECRETS["password"], "HALI_WEBHOOK_SECRET": SECRETS["webhook"],
           "HALI_QUEUE_NAME": "hali-fuzz", "AWS_ACCESS_KEY_ID": SECRETS["aws_id"],
           "AWS_SECRET_ACCESS_KEY": SECRETS["aws_secret"], "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    rules = route_rules(create_app(BackendSettings(**{k[5:].lower(): v for k, v in env.items()
                                                      if k in ("HALI_DATA_DIR", "HALI_REDIS_URL")})).url_map)
    print(f"\n{len(rules)} routes from the app's url_map: " + ", ".join(f"{' '.join(m)} {r}" for r, m in rules))
    port = services.free_port()
    server, rss_pid = _serve(root, env, port, args.server)
    try:
        url = f"http://{services.LOOPBACK}:{port}"
        ok = _send_all(url, world, rules, args, rss_pid)
    finally:
        services.stop_process(server)
    log = (root / "backend.log").read_text(errors="replace")
    kept = ROOT / ".state" / "bench-fuzz-backend.log"  # outlives the temporary dir
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(log)
    crashes = log.count("Booting worker") - 1 if args.server == "gunicorn" else 0
    in_log = [s for s in world.secrets if s and s in log]
    print(f"server workers that died and were restarted: {crashes}; tracebacks in the server log: "
          f"{log.count('Traceback')} ({kept}); secrets in the server log: {len(in_log)}")
    return ok and crashes <= 0 and not in_log


def _serve(root: Path, env: dict[str, str], port: int, kind: str) -> tuple[subprocess.Popen, int]:
    """The backend in a process of its own; returns it and the pid whose RSS to watch (gunicorn's worker)."""
    argv = [os.environ.get("HALI_PYTHON", sys.executable), "-m", "ml_backend.cli", "serve", "--port", str(port)]
    argv += ["--dev"] if kind == "dev" else ["--workers", "1", "--threads", "4"]
    proc = services.spawn(argv, root / "backend.log", env={**os.environ, **env}, cwd=ROOT, name="backend")
    services.wait_http(f"http://{services.LOOPBACK}:{port}/health", 120, proc)
    if kind == "dev":
        return proc, proc.pid
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return proc, int(children[0])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _send_all(url: str, world: World, rules: list[tuple[str, list[str]]], args: argparse.Namespace,
              rss_pid: int) -> bool:
    session = requests.Session()
    by_route: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    found: list[str] = []
    rss = {"start": rss_mb(rss_pid)}
    stats = collections.Counter()
    t0 = time.perf_counter()
    sent = 0

    @seed(args.seed)
    @settings(max_examples=args.examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(requests_on(world, rules))
    def one(req: FuzzRequest) -> None:
        nonlocal sent
        try:
            r = _send(session, url, req)
        except requests.ConnectionError:  # a kept-alive connection the server had just closed: retry once, anew
            session.close()
            stats["retried"] += 1
            r = _send(session, url, req)
        sent += 1
        by_route[req.rule][r.status_code] += 1
        found.extend(problems(req, r.status_code, r.content, world))
        if sent == 1000 or sent % 5000 == 0:
            rss[f"after {sent:,}"] = rss_mb(rss_pid)

    one()
    seconds = time.perf_counter() - t0
    rss[f"after {sent:,}"] = rss_mb(rss_pid)
    _report(by_route, found, rss, sent, seconds)
    print(f"requests retried on a fresh connection (the server had closed a kept-alive one): {stats['retried']}")
    return not found


def _send(session: requests.Session, url: str, req: FuzzRequest) -> requests.Response:
    return session.request(req.method, url + req.path, params=req.query, headers=req.headers, data=req.body,
                           timeout=60)


def _report(by_route: dict[str, collections.Counter], found: list[str], rss: dict[str, float], sent: int,
            seconds: float) -> None:
    print(f"\n{sent:,} requests in {seconds:.0f} s ({sent / seconds:.0f}/s)\n")
    print("| route | requests | answers (status: count) | 5xx |")
    print("|---|---:|---|---:|")
    for rule in sorted(by_route):
        counts = by_route[rule]
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(counts.items()))
        print(f"| `{rule}` | {sum(counts.values()):,} | {codes} | {sum(n for c, n in counts.items() if c >= 500)} |")
    fives = sum(n for c in by_route.values() for code, n in c.items() if code >= 500)
    leaks = [f for f in found if " shows " in f]
    print(f"\n5xx answers: {fives}; bodies showing a secret or a path: {len(leaks)}")
    for problem in list(dict.fromkeys(found))[:20]:
        print(f"- {problem}")
    print("server RSS MB: " + ", ".join(f"{k} {v:.1f}" for k, v in rss.items()))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="requests to generate")
    parser.add_argument("--server", choices=["gunicorn", "dev"], default="gunicorn", help="how the backend is served")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
