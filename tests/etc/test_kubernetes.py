"""etc/kubernetes/: every manifest valid against the Kubernetes API's schemas (strict, no
unknown fields), the parts agreeing with each other and with the image, and the ConfigMap's
tap loading in a real `forkd check`. scripts/kube_tap_configmap.py, which writes the
ConfigMap, is run here too."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from forkd.cli import forkd as forkd_cli
from forkd.supervisor.master import DEFAULT_GRACEFUL_TIMEOUT
from forkd.testing import (
    REPO_ROOT,
    RunningForkd,
    forkctl,
    forkd_command,
    forkd_env,
    free_port,
    make_tap,
    mktap,
    refused,
    run_forkd,
    wait_for,
)
from tests.etc.dockerfile import only
from tests.etc.installed import repo_file

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (the test extra)"
)
yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with kubernetes-validate")

MANIFESTS = repo_file("etc/kubernetes")
SCRIPT = repo_file("scripts/kube_tap_configmap.py")
# the oldest Kubernetes still commonly run, and the newest the validator knows
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def manifest(name: str) -> dict[str, Any]:
    (document,) = yaml.safe_load_all((MANIFESTS / name).read_text())
    assert isinstance(document, dict)
    return document


def manifest_files() -> list[str]:
    return sorted(path.name for path in MANIFESTS.glob("*.yaml"))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", manifest_files())
def test_each_manifest_is_valid_for_the_kubernetes_api(name: str, version: str) -> None:
    for document in yaml.safe_load_all((MANIFESTS / name).read_text()):
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
            at = "/".join(str(part) for part in error.path)
            pytest.fail(f"{name} against Kubernetes {version}: {error.message} at {at}")


def test_the_manifests_are_the_five_documented() -> None:
    assert manifest_files() == [
        "configmap.yaml",
        "deployment.yaml",
        "hpa.yaml",
        "pdb.yaml",
        "service.yaml",
    ]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifest("deployment.yaml")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only_one,) = pod_spec()["containers"]
    assert isinstance(only_one, dict)
    return only_one


def command_line() -> list[str]:
    """What the container runs: the image's ENTRYPOINT, then the Deployment's args."""
    entrypoint = only("ENTRYPOINT").exec_form()
    assert "command" not in container(), "the image's ENTRYPOINT is what runs"
    return entrypoint + [str(arg) for arg in container()["args"]]


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_the_container_runs_a_command_line_forkd_takes() -> None:
    command = command_line()
    assert command[0] == "forkd"
    parsed = forkd_cli.parser().parse_args(command[1:])  # exits 2 on an unknown option
    assert parsed.command == "start" and parsed.nodaemon
    assert parsed.metrics == "0.0.0.0:9090" and parsed.shutdown_delay > 0


def test_termination_grace_outlasts_the_shutdown_delay_and_the_drain() -> None:
    command = command_line()
    delay = float(option(command, "--shutdown-delay") or 0)
    drain = float(option(command, "--graceful-timeout") or DEFAULT_GRACEFUL_TIMEOUT)
    assert delay > 0, "a pod that drains at once drops what is still routed to it"
    assert pod_spec()["terminationGracePeriodSeconds"] > delay + drain


def test_probes_are_on_the_metrics_port_and_rollouts_keep_capacity() -> None:
    deployment = manifest("deployment.yaml")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    assert ports["metrics"] == 9090
    for probe, path in (
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/livez"),
        ("startupProbe", "/livez"),
    ):
        assert container()[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    # readiness must be seen failing within the shutdown delay
    readiness = container()["readinessProbe"]
    delay = float(option(command_line(), "--shutdown-delay") or 0)
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < delay


def test_the_pod_mounts_what_the_image_expects() -> None:
    command = command_line()
    mounts = {mount["mountPath"]: mount["name"] for mount in container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    tap_dir = os.path.dirname(command[command.index("start") + 1])
    tap_volume = volumes[mounts[tap_dir]]
    assert tap_volume["configMap"]["name"] == manifest("configmap.yaml")["metadata"]["name"]
    assert tap_volume["configMap"]["defaultMode"] & 0o022 == 0, "forkd refuses writable taps"
    assert "subPath" not in str(container()["volumeMounts"]), "subPath mounts never update"
    for path in (option(command, "--pidfile"), option(command, "--control")):
        assert path and "emptyDir" in volumes[mounts[os.path.dirname(path)]], path
    assert container()["securityContext"]["readOnlyRootFilesystem"]
    assert "emptyDir" in volumes[mounts["/tmp"]]  # a reload writes its state file there
    user = only("USER").arguments.split(":")
    assert str(pod_spec()["securityContext"]["runAsUser"]) == user[0]


def test_the_service_and_autoscaler_point_at_the_deployment() -> None:
    deployment = manifest("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = manifest("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    named = {port["name"] for port in container()["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= named
    hpa = manifest("hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "forkd_workers_busy"
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    pdb = manifest("pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


# -- the ConfigMap's tap ---------------------------------------------------------------------
def tap_of(configmap: dict[str, Any], directory: pathlib.Path) -> pathlib.Path:
    path = directory / "app.tap"
    path.write_bytes(base64.b64decode(configmap["binaryData"]["app.tap"], validate=True))
    path.chmod(0o444)  # as the Deployment mounts it
    return path


@pytest.mark.e2e
def test_the_configmap_holds_a_tap_forkd_serves_on_the_container_port(
    tmp_path: pathlib.Path,
) -> None:
    tap = tap_of(manifest("configmap.yaml"), tmp_path)
    done = run_forkd("check", str(tap))
    assert done.returncode == 0, done.stderr
    http = next(port["containerPort"] for port in container()["ports"] if port["name"] == "http")
    assert f"on 0.0.0.0:{http}>" in done.stdout


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.e2e
def test_the_script_regenerates_the_same_application(tmp_path: pathlib.Path) -> None:
    output = tmp_path / "configmap.yaml"
    done = run_script("-o", str(output))
    assert done.returncode == 0, done.stderr
    regenerated = yaml.safe_load(output.read_text())
    kubernetes_validate.validate(regenerated, VERSIONS[-1], strict=True)
    assert "Generated by scripts/kube_tap_configmap.py" in output.read_text()
    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    new = run_forkd("check", str(tap_of(regenerated, tmp_path / "new")))
    old = run_forkd("check", str(tap_of(manifest("configmap.yaml"), tmp_path / "old")))
    assert new.returncode == old.returncode == 0, new.stderr + old.stderr
    # the same application and ports (the bytes differ once forkd's version does)
    assert new.stdout.split(": ok: ")[1] == old.stdout.split(": ok: ")[1]


@pytest.mark.e2e
def test_the_script_wraps_a_given_tap_and_refuses_bad_input(tmp_path: pathlib.Path) -> None:
    tap = tmp_path / "given.tap"
    tap.write_bytes(b"FORKDTAP 1 forkd=0.1.0\n...")
    done = run_script("--tap", str(tap), "--name", "web-tap", "-o", "-")
    assert done.returncode == 0, done.stderr
    wrapped = yaml.safe_load(done.stdout)
    assert wrapped["metadata"]["name"] == "web-tap"
    assert base64.b64decode(wrapped["binaryData"]["app.tap"]) == tap.read_bytes()

    bad = run_script("-o", str(tmp_path / "x.yaml"), "--", "hello", "--port", "http")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    assert "mktap hello --port http" in bad.stderr and not (tmp_path / "x.yaml").exists()
    missing = run_script("--tap", str(tmp_path / "nope.tap"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


# -- a ConfigMap change, rolled out as a reload ------------------------------------------------
class ConfigMapVolume:
    """A directory laid out as the kubelet lays out a ConfigMap volume: each version of
    the data in a `..<timestamp>` directory, `..data` a symlink to the current one, and
    `app.tap` a symlink through `..data`. An update writes the new version beside it,
    swaps `..data` atomically (rename of a new symlink), then removes the old version."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        root.mkdir()
        self.versions = 0
        self.current: pathlib.Path | None = None
        (root / "app.tap").symlink_to("..data/app.tap")

    def publish(self, tap: bytes) -> None:
        self.versions += 1
        version = self.root / f"..2025_01_01_00_00_0{self.versions}.000000000"
        version.mkdir()
        (version / "app.tap").write_bytes(tap)
        (version / "app.tap").chmod(0o444)
        swap = self.root / "..data_tmp"
        swap.symlink_to(version.name)
        os.rename(swap, self.root / "..data")
        if self.current is not None:
            (self.current / "app.tap").unlink()
            self.current.rmdir()
        self.current = version


@pytest.mark.e2e
def test_a_configmap_update_is_served_by_a_reload_in_place(tmp_path: pathlib.Path) -> None:
    """docs/FLEET.md's rollout, in one pod: the tap changes under the running master (as
    the kubelet changes it), `forkctl reload` serves it, the master's pid stays, and the
    old version's directory being gone breaks nothing."""
    first, second = free_port(), free_port()
    made = tmp_path / "made.tap"
    make_tap(made, "echo", "--port", str(first))
    volume = ConfigMapVolume(tmp_path / "forkd-tap")
    volume.publish(made.read_bytes())
    run = tmp_path / "run"
    run.mkdir()
    ctl = str(run / "app.ctl")
    options = ("--pidfile", str(run / "app.pid"), "--control", ctl, "--no-save")
    with RunningForkd(str(volume.root / "app.tap"), *options, workers=1) as forkd:
        assert echoes(first) and refused(second)
        done = mktap("--append", str(made), "echo", "--port", str(second))
        assert done.returncode == 0, done.stderr
        volume.publish(made.read_bytes())  # `kubectl apply -f configmap.yaml`, then a sync
        reload = forkctl(ctl, "reload", forkd=forkd)
        assert reload.returncode == 0, reload.stderr + forkd.log()[-3000:]
        assert echoes(first) and echoes(second)
        status = json.loads(forkctl(ctl, "status", "--json").stdout)
        assert status["pid"] == forkd.pid and status["generation"] >= 2


def echoes(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"ping\n")
        return client.recv(16) == b"ping\n"


# -- the Deployment's command line, run -------------------------------------------------------
def http_status(port: int, path: str) -> int | None:
    """The status of GET `path` on 127.0.0.1:`port`, None if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


@pytest.mark.e2e
def test_the_probes_answer_on_a_forkd_started_as_the_deployment_starts_it(
    tmp_path: pathlib.Path,
) -> None:
    """The container's command line as it stands (ENTRYPOINT + args), with the paths and
    ports moved into tmp_path and onto loopback: every probe path the Deployment declares
    answers 200 on the metrics port, /readyz turns 503 at SIGTERM, and the master is gone
    within terminationGracePeriodSeconds."""
    command = command_line()[1:]
    app_port, metrics_port = free_port(), free_port()
    tap = make_tap(tmp_path / "app.tap", "hello", "--port", str(app_port))
    moved = {
        command[command.index("start") + 1]: tap,
        str(option(command, "--pidfile")): str(tmp_path / "app.pid"),
        str(option(command, "--control")): str(tmp_path / "app.ctl"),
        str(option(command, "--metrics")): f"127.0.0.1:{metrics_port}",
    }
    command = [moved.get(arg, arg) for arg in command]
    log = tmp_path / "forkd.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            forkd_command(*command), env=forkd_env(), stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_for(
            lambda: process.poll() is not None or http_status(metrics_port, "/readyz") == 200,
            30,
            message=lambda: f"/readyz 200: {log.read_text()}",
        )
        assert process.poll() is None, log.read_text()
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert http_status(metrics_port, container()[probe]["httpGet"]["path"]) == 200
        assert http_status(app_port, "/") == 200

        process.send_signal(signal.SIGTERM)
        wait_for(lambda: http_status(metrics_port, "/readyz") == 503, 10, message="/readyz 503")
        assert process.wait(pod_spec()["terminationGracePeriodSeconds"]) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
