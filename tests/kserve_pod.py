"""A KServe TorchServe pod played on this machine, with what the platform always does.

KServe's ``kserve-torchserve`` runtime (config/runtimes/kserve-torchserve.yaml in kserve's sources) and its
controller (``SetTorchServeDefaults``) make every such pod:

- a network namespace of its own: TorchServe on the bundle's fixed ports (8085 on loopback, metrics 8082 on
  the pod's address, where Prometheus scrapes it), KServe's model server on 8080/8081, reached from outside
  at the pod's address;
- the bundle at ``/mnt/models``, read-only: a PVC's folder mounted as it is, or what the storage initializer
  downloaded from a bucket;
- ``runAsUser: 1000``, non-root, no privilege escalation;
- ``TS_SERVICE_ENVELOPE`` = ``kserve`` (protocol v1, the default) or ``kservev2`` (v2 and grpc-v2), from the
  label the controller always sets, and ``PROTOCOL_VERSION`` = the InferenceService's ``protocolVersion``;
- ``torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties``
  (the runtime's args), given to the image's entrypoint (``deploy/kserve/entrypoint.sh``), which then starts
  KServe's model server in front (``deploy/kserve/model_server.py``).

Here a pod is a network namespace (``ip netns``) joined to the host by a veth pair, and a private mount
namespace in which a tmpfs holds ``/mnt/models``, a read-only bind of the bundle. Both servers run as uid
1000. This machine's interpreter may sit under a folder uid 1000 cannot enter (``/root``, mode 0700): inside
the pod's mount namespace such a folder is covered by a tmpfs holding only the paths the pod needs, bound
back in place (the container image installs its Python where uid 1000 can read it). Needs root, ``ip``,
``unshare`` and ``setpriv``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import requests

from project import ROOT

KSERVE_VENV = ROOT / ".venv-kserve"
ENTRYPOINT = ROOT / "deploy" / "kserve" / "entrypoint.sh"  # the image's: TorchServe, then the model server

KSERVE_MOUNT = "/mnt/models"
RUNTIME_COMMAND = [
    "torchserve", "--start", f"--model-store={KSERVE_MOUNT}/model-store",
    f"--ts-config={KSERVE_MOUNT}/config/config.properties",
]
RUNTIME_UID = 1000
POD_HOME = "/home/model-server"  # the image's user and working folder
# The controller's serviceEnvelope label for each protocolVersion, passed on as TS_SERVICE_ENVELOPE
# (SetTorchServeDefaults, pkg/apis/serving/v1beta1/inference_service_defaults.go).
SERVICE_ENVELOPES = {"v1": "kserve", "v2": "kservev2", "grpc-v2": "kservev2"}
MODEL_SERVER_PORT = 8080
METRICS_PORT = 8082  # the bundle's metrics_address port, which the InferenceServices' prometheus.io/port names


def missing_requirements() -> str | None:
    """Why a pod cannot be played here, or None."""
    if os.geteuid() != 0:
        return "a pod needs root (network and mount namespaces)"
    for tool in ("ip", "unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"a pod needs {tool}"
    if not (KSERVE_VENV / "bin" / "python").is_file():
        return f"{KSERVE_VENV} is missing: `make kserve-env` builds it"
    return None


@dataclass(frozen=True)
class Pod:
    """A running pod: its address on the host's side of the veth pair, and where its servers write."""

    name: str
    address: str
    protocol: str
    home: Path

    @property
    def model_server_url(self) -> str:
        return f"http://{self.address}:{MODEL_SERVER_PORT}"

    @property
    def metrics_url(self) -> str:
        """TorchServe's metrics as the cluster's Prometheus reads them: at the pod's address."""
        return f"http://{self.address}:{METRICS_PORT}/metrics"

    def log(self, name: str) -> str:
        path = self.home / "logs" / name
        return path.read_text(errors="replace") if path.is_file() else ""

    def processes(self) -> list[int]:
        """The pids of the pod's kserve-container: its network namespace's."""
        listed = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(pid) for pid in listed.stdout.split()]


class PodExited(RuntimeError):
    """The container's main process (KServe's model server) ended before the model was ready."""

    def __init__(self, *, returncode: int, console: str):
        super().__init__(f"the pod's servers exited with status {returncode}:\n{console[-3000:]}")
        self.returncode = returncode
        self.console = console


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


def _covered_folders(paths: list[Path]) -> dict[Path, list[Path]]:
    """For each folder uid 1000 cannot enter on the way to ``paths``: the paths below it to bind back."""
    covered: dict[Path, list[Path]] = {}
    for path in paths:
        for folder in reversed(path.parents[:-1]):  # from the top, "/" excluded
            if not folder.stat().st_mode & stat.S_IXOTH:
                covered.setdefault(folder, []).append(path)
                break
    return covered


def _outermost(paths: list[Path]) -> list[Path]:
    """The paths that are not inside another of them."""
    return sorted({path for path in paths if not any(other in path.parents for other in paths)})


def _mount_script(bundle: Path, home: Path, needed: list[Path]) -> list[str]:
    """Shell lines, run as root in the pod's mount namespace: the container's file system as far as the
    servers see it. /mnt/models (the bundle, read-only), a /tmp of its own (TorchServe unpacks archives
    to java.io.tmpdir, which is /tmp whatever TMPDIR says), /home/model-server (the image's working
    folder), and the paths uid 1000 needs under folders it cannot enter."""
    covered = _covered_folders(needed)
    for own in (Path("/tmp"), Path("/home")):  # the container's own, not the host's
        covered[own] = [path for path in needed if own in path.parents]
    kept = [*(path for paths in covered.values() for path in paths), bundle, home]
    lines = ["set -e", "mount -t tmpfs -o mode=755 pod-mnt /mnt", "mkdir /mnt/.keep"]
    for index, path in enumerate(kept):  # bound aside before the folders above them are covered
        lines += [f"mkdir /mnt/.keep/{index}", f"mount --bind {shlex.quote(str(path))} /mnt/.keep/{index}"]
    for folder in covered:
        mode = "1777" if folder == Path("/tmp") else "755"
        lines.append(f"mount -t tmpfs -o mode={mode} pod-cover {shlex.quote(str(folder))}")
    places = [*(path for paths in covered.values() for path in paths), Path(KSERVE_MOUNT), Path(POD_HOME)]
    for index, place in enumerate(places):
        lines += [f"mkdir -p {shlex.quote(str(place))}", f"mount --bind /mnt/.keep/{index} {shlex.quote(str(place))}"]
    lines.append(f"mount -o remount,bind,ro {KSERVE_MOUNT}")
    return lines


def _readable_by_all(folder: Path) -> None:
    """The bundle as the storage initializer leaves it for the server: folders 0755, files 0644."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@contextlib.contextmanager
def kserve_pod(bundle: Path, *, protocol: str, index: int, torchserve_python: Path) -> Iterator[Pod]:
    """Starts the pod, waits until KServe's model server reports the model ready, and tears it all down.

    Args:
        bundle: the folder `make kserve-bundle` wrote (mounted read-only at /mnt/models).
        protocol: the InferenceService's protocolVersion: "v1", "v2" or "grpc-v2".
        index: a small number that keeps this pod's names and addresses apart from other pods'.
        torchserve_python: the interpreter whose environment holds TorchServe and the handler's packages.
    """
    name = f"tagger-{os.getpid()}-{index}"
    host_end, pod_end = f"tgh{os.getpid() % 10000}{index}", f"tgp{os.getpid() % 10000}{index}"
    subnet = f"10.{200 + index}.{os.getpid() % 250}"
    home = Path(tempfile.mkdtemp(prefix="tagger-pod-"))
    home.chmod(0o755)
    os.chown(home, RUNTIME_UID, RUNTIME_UID)
    _readable_by_all(bundle)
    venv_bin = torchserve_python.parent
    # The repository (the entrypoint, .venv-kserve), TorchServe's environment, and the Pythons both link to.
    interpreters = [torchserve_python.resolve(), (KSERVE_VENV / "bin" / "python").resolve()]
    needed = [ROOT, venv_bin.parent, Path(sys.base_prefix).resolve(), *(python.parent.parent for python in interpreters)]
    env = {
        "PATH": f"{venv_bin}:{os.environ['PATH']}", "HOME": POD_HOME, "TMPDIR": "/tmp",
        "TS_SERVICE_ENVELOPE": SERVICE_ENVELOPES[protocol], "PROTOCOL_VERSION": protocol,
        "KSERVE_PYTHON": str(KSERVE_VENV / "bin" / "python"), "LANG": "C.UTF-8",
    }
    script = "\n".join([
        *_mount_script(bundle, home, _outermost(needed)),
        f"cd {POD_HOME}",
        "exec " + shlex.join(["setpriv", f"--reuid={RUNTIME_UID}", f"--regid={RUNTIME_UID}", "--clear-groups",
                              "--no-new-privs", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                              "sh", str(ENTRYPOINT), *RUNTIME_COMMAND]),
    ])
    _run("ip", "netns", "add", name)
    console = (home / "pod-console.log").open("ab")
    try:
        _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", pod_end, "netns", name)
        _run("ip", "addr", "add", f"{subnet}.1/30", "dev", host_end)
        _run("ip", "link", "set", host_end, "up")
        for command in (["ip", "addr", "add", f"{subnet}.2/30", "dev", pod_end], ["ip", "link", "set", pod_end, "up"],
                        ["ip", "link", "set", "lo", "up"]):
            _run("ip", "netns", "exec", name, *command)
        launcher = subprocess.Popen(
            ["ip", "netns", "exec", name, "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=console, stderr=console,
        )
        pod = Pod(name=name, address=f"{subnet}.2", protocol=protocol, home=home)
        _wait_until_ready(pod, launcher)
        yield pod
    finally:
        _stop(name)
        console.close()
        shutil.rmtree(home, ignore_errors=True)


def _wait_until_ready(pod: Pod, launcher: subprocess.Popen, timeout: float = 300) -> None:
    """Waits for KServe's model server to say the model is ready (v1 ``GET /v1/models/<name>``).

    Raises:
        PodExited: the model server ended first (the launcher runs it in the end, by ``exec``).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            raise PodExited(returncode=launcher.returncode,
                            console=(pod.home / "pod-console.log").read_text(errors="replace"))
        try:
            if requests.get(f"{pod.model_server_url}/v1/models/tagger", timeout=2).json().get("ready"):
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the pod was not ready after {timeout} s:\n{pod.log('ts_log.log')[-3000:]}")


def _stop(name: str) -> None:
    """Ends every process of the pod, then the namespace (which takes the veth pair with it)."""
    for signal_name in ("TERM", "KILL"):
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        if pids:
            subprocess.run(["kill", f"-{signal_name}", *pids], capture_output=True)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and subprocess.run(
                    ["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split():
                time.sleep(0.2)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
