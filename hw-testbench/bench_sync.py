"""Benchmark: from entering recovery to the directory applied and all uploads confirmed.

The fake cloud runs as its own process (mutual TLS on loopback). The appliance's real
subsystems (directory, sync: SQLite, sealed bundle store, TLS client) run in this process so
the benchmark can announce the WAN transition itself: the WAN monitor publishes the same
WanStateChanged event. Each run: enrol and apply bundle v(n) beforehand; then, "during the
outage", 10,000 call records are written and the cloud publishes v(n+1), a 500-extension
directory; the clock starts when RECOVERING is published and stops when the sync subsystem
journals 'recovery-synced' (bundle verified, applied atomically and installed; every call
record and event confirmed by the cloud). The cloud's own count is checked afterwards.

    python hw-testbench/bench_sync.py [--runs 3] [--extensions 500] [--records 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import jbcbench  # noqa: F401 - puts this checkout's appliance package on the path
from appliance.store.call_records import CallRecord
from appliance.sync.config import SyncConfig
from appliance.wan.events import WanState, WanStateChanged
from jbcbench.daemon import REPO_ROOT, _pythonpath
from jbcbench.inprocess import InProcessAppliance


class CloudProcess:
    def __init__(self, directory: pathlib.Path, extensions: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jbcbench.fake_cloud", "--dir", str(directory),
             "--extensions", str(extensions)], cwd=REPO_ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": _pythonpath()})
        self.info = self.read()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fake cloud exited")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def outage_records(count: int, start: float) -> list[CallRecord]:
    return [CallRecord(id=str(uuid.uuid4()), direction="outbound", from_party=str(1001 + n % 500),
                       to_party=f"+1555{n:07d}", trunk="lte1", started_at=start + n * 0.1,
                       answered_at=start + n * 0.1 + 3, ended_at=start + n * 0.1 + 60,
                       result="answered", cause="200 OK / BYE", emergency=False, location=None)
            for n in range(count)]


async def one_run(workdir: pathlib.Path, cloud: CloudProcess, version: int, extensions: int,
                  records: int) -> dict:
    info = cloud.info
    config = SyncConfig(cloud_url=info["url"], ca_file=pathlib.Path(info["ca_file"]),
                        signing_public_key=info["signing_public_key"],
                        enrollment_token=cloud.ask("token")["token"], poll_interval_s=3600)
    cloud.ask(f"publish {version} {extensions}")
    before = cloud.ask("stats")["call_records"]
    async with InProcessAppliance(workdir, sync=config) as app:
        setup = await app.call("sync.now")
        assert setup["ok"] and setup["status"]["directory_version"] == version, setup
        app.bus.publish(WanStateChanged(previous=WanState.ONLINE, state=WanState.OUTAGE,
                                        cause="bench: WAN cut", since=time.time()))
        app.by_name("sync").call_records.insert_many(outage_records(records, time.time() - 3600))
        cloud.ask(f"publish {version + 1} {extensions}")
        journal = app.journal.follow()
        started = time.time()
        app.bus.publish(WanStateChanged(previous=WanState.OUTAGE, state=WanState.RECOVERING,
                                        cause="bench: cloud reachable", since=started))
        while (entry := await journal.get()).kind != "recovery-synced":
            pass
        done = entry.details
        directory = app.by_name("directory").current
        assert directory.version == version + 1 and len(directory.extensions) == extensions
    stats = cloud.ask("stats")
    assert stats["call_records"] - before == records, stats
    assert stats["violations"] == [], stats["violations"]
    return {"bundle_applied_s": done["bundle_applied_s"],
            "all_confirmed_s": done["uploads_confirmed_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--extensions", type=int, default=500)
    parser.add_argument("--records", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        root = pathlib.Path(tmp)
        cloud = CloudProcess(root / "cloud", args.extensions)
        try:
            runs = [asyncio.run(one_run(root / f"appliance{n}", cloud, 1 + 2 * n,
                                        args.extensions, args.records))
                    for n in range(args.runs)]
        finally:
            cloud.close()
    applied = [r["bundle_applied_s"] for r in runs]
    confirmed = [r["all_confirmed_s"] for r in runs]
    print(json.dumps({
        "benchmark": "sync_recovery",
        "extensions": args.extensions, "call_records": args.records, "runs": args.runs,
        "upload_batch": SyncConfig().upload_batch,
        "directory_applied_s": {"median": statistics.median(applied), "min": min(applied),
                                "max": max(applied)},
        "all_uploads_confirmed_s": {"median": statistics.median(confirmed),
                                    "min": min(confirmed), "max": max(confirmed)},
        "per_run": runs,
        "note": "from RECOVERING published to 'recovery-synced' journalled; fake cloud in its "
                "own process over mutual TLS on loopback; 2-core machine",
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
