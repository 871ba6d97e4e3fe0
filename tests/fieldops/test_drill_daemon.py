"""'jbc drill' against the real daemon: the test phone registers and calls itself through the
local proxy while the cloud is up (no phone is taken away), the report is kept, shown and
uploaded to the (fake) cloud, and a failed drill alerts."""

from __future__ import annotations

import json

import pytest

from jbcbench.fake_cloud import CloudKeys, FakeCloud
from jbcbench.sitelab import SITE_VERSION, SiteLab, site_directory

from .conftest import cloud_site

pytestmark = pytest.mark.integration


def site(cloud: FakeCloud, keys: CloudKeys, token: str, extra: str = "") -> str:
    return cloud_site(cloud, token, site_name="drill-site", extra=extra)


@pytest.fixture
def cloud(tmp_path):
    keys = CloudKeys(tmp_path / "keys")
    with FakeCloud(keys) as fake:
        fake.publish(site_directory(["101"], {"101": "pw-101-x"}))
        yield fake
    assert fake.violations == []


def test_a_drill_proves_the_local_path_and_reaches_the_cloud(daemon_factory, cloud):
    daemon = daemon_factory(site(cloud, cloud.keys, cloud.new_token())).start()
    SiteLab.wait_for(lambda: daemon.call("sync.status").get("directory_version")
                     == SITE_VERSION, 30, "enrolled, directory applied")
    done = daemon.cli("drill", "run", timeout_s=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS  local registrar and proxy answer" in done.stdout
    report = json.loads(daemon.cli("--json", "drill", "report").stdout)["reports"][0]
    steps = {s["id"]: s for s in report["steps"]}
    assert steps["local-sip"]["outcome"] == "passed"
    assert "called itself through the proxy" in steps["local-sip"]["detail"]
    assert steps["backup-heartbeat"]["outcome"] == "skipped"
    assert report["kind"] == "standard" and report["passed"]
    # nothing was taken from the cloud: the WAN state and the registrar's stance unchanged,
    # and the probe identity is gone
    assert daemon.call("sip.phones")["phones"] == []
    SiteLab.wait_for(lambda: report["id"] in cloud.drill_reports, 15, "report uploaded")
    uploaded = cloud.drill_reports[report["id"]]
    assert uploaded["passed"] is True and uploaded["steps"][0]["id"] == "local-sip"
    SiteLab.wait_for(lambda: json.loads(daemon.cli("--json", "drill", "report").stdout)[
        "reports"][0]["uploaded_at"], 15, "marked uploaded")
    assert "uploaded to the cloud" in daemon.cli("drill", "report").stdout
    events = json.loads(daemon.cli("--json", "events", "--subsystem", "drill").stdout)
    assert events[-1]["kind"] == "completed"


def test_a_failed_drill_is_journalled_and_exits_1(daemon_factory, cloud):
    extra = '[drill]\nnumber = "+15555550199"\n[[trunks]]\nname = "lte1"\nkind = "lte"\n' \
        'usb_id = "2c7c:0125"\nsysfs_root = "/nonexistent/sys"\ndev_root = "/nonexistent/dev"\n'
    daemon = daemon_factory(site(cloud, cloud.keys, cloud.new_token(), extra)).start()
    done = daemon.cli("drill", "run", timeout_s=120)
    assert done.returncode == 1
    assert "FAIL  lte1 calls +15555550199" in done.stdout
    events = json.loads(daemon.cli("--json", "events", "--subsystem", "drill").stdout)
    assert events[-1]["kind"] == "failed"
    assert "trunk:lte1" in events[-1]["details"]["failed_steps"]
    SiteLab.wait_for(lambda: any(e["kind"] == "failed" and e["subsystem"] == "drill"
                                 for e in cloud.events.values()), 15,
                     "the failure reaches the cloud")


def test_the_schedule_knows_the_window(daemon_factory, cloud):
    extra = '[drill]\nwindow = "daily 00:00-23:59"\nevery_days = 7\n'
    daemon = daemon_factory(site(cloud, cloud.keys, cloud.new_token(), extra)).start()
    schedule = json.loads(daemon.cli("--json", "drill", "schedule").stdout)
    assert schedule["window"] == "daily 00:00-23:59"
    assert "jbc-drill.timer" in schedule["timer"]
