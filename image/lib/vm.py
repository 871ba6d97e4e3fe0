"""Boot a built image in QEMU and read what the appliance reports, for image/boot-test and
image/update-test (stdlib only; runs as root on the build host).

The guest writes one JSON line per boot to the virtio-serial port ``org.jbc.status``
(image/rootfs/usr/lib/jbc/status-port): 'jbc status --json', 'jbc update status --json' and
the boot's timings. The console (ttyS0 / ttyAMA0) is only kept as a log for people.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
STATUS_PORT = "org.jbc.status"
ANALYSIS_PORT = "org.jbc.analysis"


def image_cache() -> pathlib.Path:
    return pathlib.Path(os.environ.get("JBC_IMAGE_CACHE") or REPO / "image" / ".cache")


def arch_out(arch: str) -> pathlib.Path:
    return image_cache() / "out" / arch


@dataclasses.dataclass(frozen=True, slots=True)
class Machine:
    arch: str
    qemu: str
    code: str
    vars: str
    base: tuple[str, ...]
    tcg_cpu: tuple[str, ...]


MACHINES = {
    "amd64": Machine("amd64", "qemu-system-x86_64", "/usr/share/OVMF/OVMF_CODE_4M.fd",
                     "/usr/share/OVMF/OVMF_VARS_4M.fd",
                     ("-machine", "q35", "-device", "i6300esb"), ("-cpu", "max")),
    "arm64": Machine("arm64", "qemu-system-aarch64", "/usr/share/AAVMF/AAVMF_CODE.fd",
                     "/usr/share/AAVMF/AAVMF_VARS.fd",
                     ("-machine", "virt", "-device", "i6300esb"), ("-cpu", "cortex-a72")),
}


def kvm_works(arch: str, timeout_s: float = 20.0) -> tuple[bool, str]:
    """Whether KVM can really run a guest here, not just whether /dev/kvm exists.

    Here /dev/kvm opens but a stock kernel cannot run under it ('-cpu host' aborts or hangs
    silently), so the test is the real one: boot the UEFI firmware under KVM and wait for it
    to print on the serial port. Anything else means TCG."""
    if arch != "amd64" or os.uname().machine != "x86_64":
        return False, "KVM only for a guest of the host's architecture"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm missing or not accessible"
    machine = MACHINES[arch]
    with tempfile.TemporaryDirectory(prefix="jbc-kvm-") as tmp:
        vars_copy = pathlib.Path(tmp) / "vars.fd"
        shutil.copy(machine.vars, vars_copy)
        command = [machine.qemu, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256",
                   "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none",
                   "-drive", f"if=pflash,format=raw,readonly=on,file={machine.code}",
                   "-drive", f"if=pflash,format=raw,file={vars_copy}",
                   "-serial", "stdio"]
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL)
        except OSError as error:
            return False, f"cannot start {machine.qemu}: {error}"
        try:
            out, err = process.communicate(timeout=timeout_s)
            return False, "QEMU with KVM exited at once: " + (
                err.decode(errors="replace").strip().splitlines() or ["no reason given"])[-1]
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        if out.strip():
            return True, "KVM runs the UEFI firmware"
        return False, f"under KVM the firmware printed nothing in {timeout_s:.0f} s"


@dataclasses.dataclass(slots=True)
class Vm:
    """One QEMU guest booted from a disk image; reports arrive on its status port."""

    arch: str
    disk: pathlib.Path
    workdir: pathlib.Path
    accel: str = "tcg"
    network: str = "none"
    """'none' (no NIC at all), or 'wan': a NIC with link and DHCP (QEMU's user network,
    restricted: nothing leaves the host) and SSH forwarded from 127.0.0.1:ssh_port."""
    ssh_port: int = 0
    extra_disks: tuple[pathlib.Path, ...] = ()
    analysis: bool = False
    """Also give the guest the org.jbc.analysis port: after the boot report it sends where
    the boot's time went (image/rootfs/usr/lib/jbc/boot-analysis)."""
    memory_mib: int = 1024
    cpus: int = 2
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    _read_offsets: dict = dataclasses.field(default_factory=dict)
    cpu_samples: list = dataclasses.field(default_factory=list)
    """(seconds since start, CPU seconds QEMU has used), sampled while waiting for reports:
    how much work the boot took, apart from how much of the host's CPU it could get."""

    @property
    def console_log(self) -> pathlib.Path:
        return self.workdir / "console.log"

    @property
    def status_log(self) -> pathlib.Path:
        return self.workdir / "status-port.jsonl"

    @property
    def analysis_log(self) -> pathlib.Path:
        return self.workdir / "analysis-port.jsonl"

    def command(self) -> list[str]:
        machine = MACHINES[self.arch]
        vars_copy = self.workdir / "efivars.fd"
        if not vars_copy.exists():
            shutil.copy(machine.vars, vars_copy)
        command = [machine.qemu, *machine.base]
        if self.accel == "kvm":
            command += ["-accel", "kvm", "-cpu", "host"]
        else:
            command += ["-accel", "tcg,thread=multi", *machine.tcg_cpu]
        command += ["-m", str(self.memory_mib), "-smp", str(self.cpus),
                    "-display", "none", "-monitor", "none",
                    "-drive", f"if=pflash,format=raw,readonly=on,file={machine.code}",
                    "-drive", f"if=pflash,format=raw,file={vars_copy}",
                    "-drive", f"file={self.disk},if=virtio,format={_format(self.disk)},"
                              "cache=unsafe,discard=unmap",
                    "-serial", f"file:{self.console_log}",
                    "-device", "virtio-serial-pci",
                    "-chardev", f"file,id=jbcstatus,path={self.status_log}",
                    "-device", f"virtserialport,chardev=jbcstatus,name={STATUS_PORT}",
                    "-device", "virtio-rng-pci"]
        if self.analysis:
            command += ["-chardev", f"file,id=jbcanalysis,path={self.analysis_log}",
                        "-device", f"virtserialport,chardev=jbcanalysis,name={ANALYSIS_PORT}"]
        for extra in self.extra_disks:
            command += ["-drive", f"file={extra},if=virtio,format=raw,readonly=on"]
        if self.network == "wan":
            command += ["-nic", "user,model=virtio-net-pci,restrict=on,"
                        f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"]
        else:
            command += ["-nic", "none"]
        return command

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_log.write_bytes(b"")
        self.status_log.write_bytes(b"")
        self.analysis_log.write_bytes(b"")
        self._read_offsets = {}
        self.cpu_samples = []
        if self.network == "wan" and not self.ssh_port:
            self.ssh_port = free_port()
        with open(self.workdir / "qemu.log", "wb") as qemu_log:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                            stdout=qemu_log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.started_at = time.monotonic()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def power_cut(self) -> None:
        """Pull the plug: QEMU is killed, the guest gets no warning and syncs nothing."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def next_report(self, timeout_s: float) -> dict | None:
        """The next JSON line the guest writes on the status port, or None on timeout."""
        return self._next_line(self.status_log, timeout_s)

    def next_analysis(self, timeout_s: float) -> dict | None:
        """The boot analysis the guest writes on the analysis port, or None on timeout."""
        return self._next_line(self.analysis_log, timeout_s)

    def _next_line(self, log: pathlib.Path, timeout_s: float) -> dict | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            offset = self._read_offsets.get(log, 0)
            with open(log, "rb") as port:
                port.seek(offset)
                data = port.read()
            newline = data.find(b"\n")
            if newline >= 0:
                self._read_offsets[log] = offset + newline + 1
                line = data[:newline].decode(errors="replace").strip()
                if line:
                    try:
                        report = json.loads(line)
                    except ValueError:
                        report = {"event": "unparsed", "line": line[:500]}
                    report["_host_elapsed_s"] = round(time.monotonic() - self.started_at, 1)
                    return report
                continue
            if not self.running():
                return None
            self._sample_cpu()
            time.sleep(0.5)
        return None

    def _sample_cpu(self) -> None:
        try:
            with open(f"/proc/{self.process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return
        ticks = os.sysconf("SC_CLK_TCK")
        cpu_s = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        self.cpu_samples.append((round(time.monotonic() - self.started_at, 1), cpu_s))

    def cpu_used_at(self, elapsed_s: float) -> float | None:
        """CPU seconds QEMU had used ``elapsed_s`` after it started (the nearest sample)."""
        if not self.cpu_samples:
            return None
        at = min(self.cpu_samples, key=lambda sample: abs(sample[0] - elapsed_s))
        return round(at[1], 1) if abs(at[0] - elapsed_s) <= 2.0 else None

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def console_contains(self, needle: str) -> bool:
        try:
            return needle in self.console_log.read_text(errors="replace")
        except OSError:
            return False

    def ssh(self, key: pathlib.Path, command: str, *, timeout_s: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            ["ssh", "-i", str(key), "-p", str(self.ssh_port), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", "root@127.0.0.1", command],
            capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise RuntimeError(f"ssh {command!r} exited {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()[-800:]}")
        return done


def _format(disk: pathlib.Path) -> str:
    return "qcow2" if disk.suffix == ".qcow2" else "raw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overlay(base: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
    """A throw-away copy-on-write disk on top of the built image (the image stays pristine)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(path)], check=True)
    return path


def gpt_partition(disk: pathlib.Path, name: str) -> tuple[int, int]:
    """(offset, size) in bytes of the partition labelled ``name`` in a raw GPT disk image."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], check=True,
                                      capture_output=True, text=True).stdout)
    sector = table["partitiontable"].get("sectorsize", 512)
    for part in table["partitiontable"]["partitions"]:
        if part.get("name") == name:
            return part["start"] * sector, part["size"] * sector
    raise LookupError(f"{disk} has no partition named {name}")


@contextlib.contextmanager
def partition_file(disk: pathlib.Path, name: str, workdir: pathlib.Path) -> Iterator[pathlib.Path]:
    """The partition ``name`` of a raw disk image as a file to edit (debugfs), written back
    into the disk image afterwards."""
    offset, size = gpt_partition(disk, name)
    part = workdir / f"{name}.img"
    mib = 1024 * 1024
    subprocess.run(["dd", f"if={disk}", f"of={part}", "bs=1M", f"skip={offset // mib}",
                    f"count={size // mib}", "conv=sparse", "status=none"], check=True)
    yield part
    subprocess.run(["dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={offset // mib}",
                    "conv=notrunc,sparse", "status=none"], check=True)
    part.unlink()


def debugfs(image: pathlib.Path, *commands: str) -> None:
    script = "\n".join(commands) + "\n"
    done = subprocess.run(["debugfs", "-w", "-f", "-", str(image)], input=script, text=True,
                          capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"debugfs failed: {done.stderr.strip()}")
