"""The Raspberry Pi's A/B switching (image/rootfs/usr/lib/jbc/raspi-tryboot, RAUC's custom
boot loader backend), driven through RAUC's requests on a boot partition in a temp dir."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "image/rootfs/usr/lib/jbc/raspi-tryboot"


def load():
    loader = importlib.machinery.SourceFileLoader("raspi_tryboot", str(SCRIPT))
    spec = importlib.util.spec_from_loader("raspi_tryboot", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


tryboot = load()


@pytest.fixture
def boot(tmp_path):
    (tmp_path / "config.txt").write_text((REPO / "image/boot/raspi/config.txt").read_text())
    return tmp_path


def backend(boot: pathlib.Path, running: str):
    cmdline = boot / "cmdline"
    cmdline.write_text(f"root=PARTUUID=x ro rauc.slot={running} quiet\n")
    return tryboot.Tryboot(boot, cmdline)


def sections(boot):
    return tryboot.read_prefixes((boot / "config.txt").read_text())


def test_the_image_boots_slot_a_and_keeps_b_for_a_trial(boot):
    rauc = backend(boot, "A")
    assert sections(boot) == {"all": "A", "tryboot": "B"}
    assert rauc.get_primary() == "A"
    assert rauc.get_state("A") == "good"
    assert rauc.get_state("B") == "bad"


def test_an_install_arms_a_one_time_trial_and_a_passed_check_commits_it(boot):
    rauc = backend(boot, "A")
    rauc.set_primary("B")                       # rauc install into B
    assert (boot / "jbc-tryboot").read_text() == "B\n"
    assert rauc.get_primary() == "B"
    assert sections(boot) == {"all": "A", "tryboot": "B"}
    on_b = backend(boot, "B")                   # reboot "0 tryboot": the firmware starts b/
    on_b.set_state("B", "good")                 # jbc-boot-check: jbcd ready, check passed
    assert sections(boot) == {"all": "B", "tryboot": "A"}
    assert not (boot / "jbc-tryboot").exists()
    assert on_b.get_primary() == "B"


def test_a_failed_check_disarms_the_trial_and_a_plain_reboot_returns_to_a(boot):
    backend(boot, "A").set_primary("B")
    on_b = backend(boot, "B")
    on_b.set_state("B", "bad")
    assert not (boot / "jbc-tryboot").exists()
    assert sections(boot)["all"] == "A"
    assert on_b.get_primary() == "A"
    assert on_b.get_state("B") == "bad"


def test_a_trial_lost_to_a_power_cut_is_not_tried_again_behind_anyones_back(boot):
    backend(boot, "A").set_primary("B")
    on_a = backend(boot, "A")                   # the firmware fell back to [all] by itself
    on_a.set_state("A", "good")                 # the committed slot passes its check
    assert not (boot / "jbc-tryboot").exists()
    assert sections(boot) == {"all": "A", "tryboot": "B"}


def test_choosing_the_committed_slot_again_cancels_an_armed_trial(boot):
    rauc = backend(boot, "A")
    rauc.set_primary("B")
    rauc.set_primary("A")
    assert not (boot / "jbc-tryboot").exists()


@pytest.mark.parametrize("argv", [["set-primary", "C"], ["frobnicate"], ["set-state", "A"]])
def test_unknown_requests_are_refused(boot, argv, monkeypatch, capsys):
    monkeypatch.setattr(tryboot, "BOOT", boot)
    assert tryboot.main(argv) == 2
    assert "unknown request" in capsys.readouterr().err


def test_a_config_without_an_all_prefix_is_an_error():
    with pytest.raises(ValueError, match=r"no os_prefix in its \[all\] section"):
        tryboot.read_prefixes("[tryboot]\nos_prefix=b/\n")
