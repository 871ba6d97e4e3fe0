"""'jbc support-bundle' on a bench site: every file a support desk needs, and not one of the
site's secrets (SIP passwords and their hashes, the SIM PIN, the enrolment token, the device
and storage keys) anywhere in it."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import pathlib
import tarfile

import pytest

from appliance.cli.client import ClientError
from appliance.sip.digest import ha1
from appliance.support.bundle import REDACTED, build_tarball, scrub
from jbcbench.daemon import DaemonProcess
from jbcbench.fake_cloud import CloudKeys, FakeCloud
from jbcbench.modems.lte import QUECTEL_EG25, LteModemSim
from jbcbench.modems.timing import SimTiming
from jbcbench.modems.usb import UsbBus
from jbcbench.sitelab import SITE_VERSION, SiteLab, site_directory

from .conftest import cloud_site

PIN = "8642"


def test_scrub_removes_each_secret_and_secret_assignments():
    text = 'pin = "8642"\nuser 101 password s3cret-pw in a log line\ntoken=abc123xyz\n'
    clean = scrub(text, ["s3cret-pw", "8642"])
    assert "8642" not in clean and "s3cret-pw" not in clean and "abc123xyz" not in clean
    assert clean.count(REDACTED) == 3


def test_the_tarball_has_one_top_directory_and_readable_files():
    name, data = build_tarball({"a.json": "{}\n", "README.txt": "hi\n"}, site="bench site",
                               secrets=[], now=1_800_000_000)
    assert name == "jbc-support-bench-site-20270115T080000Z.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == [f"{name[:-7]}/README.txt", f"{name[:-7]}/a.json"]


def site_ready(daemon: DaemonProcess) -> bool:
    try:
        trunks = daemon.call("trunks.list")["trunks"]
        directory = daemon.call("sync.status").get("directory_version")
    except ClientError:  # asked before the subsystems registered their commands
        return False
    return directory == SITE_VERSION and bool(trunks) and trunks[0]["sim"] == "ready"


@pytest.mark.integration
async def test_no_secret_of_a_bench_site_is_in_its_support_bundle(tmp_path):
    keys = CloudKeys(tmp_path / "keys")
    extensions = ["101", "102", "103"]
    passwords = {n: f"pw-{n}-Zq9{n}x" for n in extensions}
    directory = site_directory(extensions, passwords)
    bus = UsbBus(tmp_path / "usb")
    modem = LteModemSim(bus, profile=QUECTEL_EG25, timing=SimTiming.fast(), sim_state="pin",
                        pin=PIN)
    with FakeCloud(keys) as cloud:
        cloud.publish(directory)
        token = cloud.new_token()
        config = cloud_site(cloud, token, site_name="bench", extra=f"""
[[trunks]]
name = "lte1"
kind = "lte"
usb_id = "2c7c:0125"
pin = "{PIN}"
health_interval_s = 1.0
sysfs_root = "{bus.sysfs}"
dev_root = "{bus.dev}"
""")
        async with modem:
            (tmp_path / "jbcd").mkdir()
            daemon = DaemonProcess(tmp_path / "jbcd", config)
            await asyncio.to_thread(daemon.start)
            try:
                await asyncio.to_thread(SiteLab.wait_for, lambda: site_ready(daemon), 30,
                                        "directory applied and the SIM PIN entered")
                out = tmp_path / "out"
                out.mkdir()
                done = await asyncio.to_thread(daemon.cli, "--json", "support-bundle", "-o",
                                               str(out), timeout_s=120)
            finally:
                await asyncio.to_thread(daemon.stop)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    path = pathlib.Path(result["path"])
    with tarfile.open(path) as tar:
        members = {pathlib.PurePath(m.name).name: tar.extractfile(m).read().decode()
                   for m in tar.getmembers() if m.isfile()}
    for needed in ("README.txt", "versions.json", "config.json", "appliance.toml",
                   "status.json", "wan.json", "trunks.json", "sync.json", "phones.json",
                   "readiness.json", "modems.json", "selftest.json", "journal.jsonl",
                   "jbcd.log", "unit.txt"):
        assert needed in members, f"{needed} missing from the bundle"
    assert json.loads(members["sync.json"])["directory_version"] == SITE_VERSION
    assert json.loads(members["modems.json"])[0]["details"]["imei"]
    assert json.loads(members["selftest.json"])["now"]["verdict"] in ("pass", "warn", "fail")
    state = tmp_path / "jbcd" / "state"
    secrets = {"SIM PIN": PIN, "enrolment token": token}
    for extension, password in passwords.items():
        secrets[f"password of {extension}"] = password
        for algorithm in ("MD5", "SHA-256"):
            secrets[f"{algorithm} HA1 of {extension}"] = ha1(algorithm, extension, "jbc",
                                                             password)
    storage_key = (state / "storage.key").read_bytes()
    secrets["storage key (hex)"] = storage_key.hex()
    secrets["storage key (base64)"] = base64.b64encode(storage_key).decode()
    device_pem = (state / "identity" / "device.pem").read_text()
    key_lines = [line for line in device_pem.split("PRIVATE KEY-----")[1].splitlines()
                 if line and not line.startswith("-----")]
    for index, line in enumerate(key_lines):
        secrets[f"device key line {index}"] = line
    everything = "\n".join(members.values())
    for what, secret in secrets.items():
        assert secret not in everything, f"{what} leaked into the support bundle"
    assert "jbcd" in members["jbcd.log"] and "selftest" in members["journal.jsonl"]
