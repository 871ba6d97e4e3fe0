"""SIGKILL at random instants while bundles are being applied: the store always comes back with
a complete old or complete new bundle, never a mix, never corrupt.

Each trial forks a small process that applies a chain of new bundle versions as fast as it
can (the real BundleStore.apply: seal, write, fsync, link, rename, fsync dir) and reports
each finished apply on a pipe; the test kills it with SIGKILL after a random delay and then
loads the store exactly as jbcd does at start (DirectoryService via load_applied).
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.directory.model import parse_directory
from appliance.store.sealed import SealingKey
from appliance.sync.bundle import verify_bundle
from appliance.sync.bundle_store import BundleStore
from jbcbench.fake_cloud import make_directory, sign_bundle

TRIALS = 60
CHAIN = 4
EXTENSIONS = 150


def _bundle(key, version):
    envelope = sign_bundle(key, account="acme", version=version,
                           directory=make_directory(version, extensions=EXTENSIONS))
    return verify_bundle(envelope, key.public_key(), account="acme", applied_version=None)


def _child(store: BundleStore, bundles, report_fd: int) -> None:
    try:
        os.write(report_fd, b"go")
        for bundle in bundles:
            store.apply(bundle)
            os.write(report_fd, bundle.version.to_bytes(4, "big"))
    finally:
        os._exit(0)


@pytest.mark.integration
def test_sigkill_during_apply_leaves_old_or_new_never_a_mix(tmp_path):
    signing = Ed25519PrivateKey.generate()
    sealing = SealingKey.load_or_create(tmp_path)
    store = BundleStore(tmp_path, sealing, signing.public_key())
    store.apply(_bundle(signing, 1))
    expected = {}
    bundles = {}
    top = 1 + TRIALS * CHAIN
    for version in range(1, top + 1):
        bundles[version] = _bundle(signing, version)
        expected[version] = parse_directory(make_directory(version, extensions=EXTENSIONS),
                                            source="expected")
    # How long does one apply take here? Kill somewhere within a whole chain.
    probe = BundleStore(tmp_path / "probe", sealing, signing.public_key())
    timings = []
    for version in range(1, 8):
        started = time.perf_counter()
        probe.apply(bundles[version])
        timings.append(time.perf_counter() - started)
    per_apply = sorted(timings)[len(timings) // 2]
    rng = random.Random(1234)
    outcomes = {"before-any": 0, "mid-chain": 0, "chain-done": 0}
    version = 1
    for _ in range(TRIALS):
        chain = [bundles[v] for v in range(version + 1, version + 1 + CHAIN)]
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(BundleStore(tmp_path, sealing, signing.public_key()), chain, write_fd)
        os.close(write_fd)
        assert os.read(read_fd, 2) == b"go"
        time.sleep(rng.uniform(0, per_apply * CHAIN))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        reported = os.read(read_fd, 1024)
        os.close(read_fd)
        confirmed = int.from_bytes(reported[-4:], "big") if reported else version

        # Restart: exactly what jbcd does at start.
        restarted = BundleStore(tmp_path, sealing, signing.public_key())
        loaded = restarted.load_applied()
        assert loaded is not None and restarted.problems == []
        directory, source = loaded
        assert source == f"cloud bundle v{directory.version}"
        assert confirmed <= directory.version <= version + CHAIN
        assert directory == expected[directory.version]  # whole, not a mix of two versions
        previous = restarted.read("previous")
        if directory.version > 1:
            assert previous is not None
            assert previous.version in (directory.version - 1, directory.version)
        assert not list((tmp_path / "bundles").glob("*.new"))  # leftovers cleaned
        if directory.version == version:
            outcomes["before-any"] += 1
        elif directory.version == version + CHAIN:
            outcomes["chain-done"] += 1
        else:
            outcomes["mid-chain"] += 1
        version = directory.version
    # The kills really landed inside applies, not only before or after them all.
    assert outcomes["mid-chain"] >= TRIALS // 6, outcomes
