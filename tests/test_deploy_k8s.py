"""The Kubernetes recipes (deploy/kubernetes/, Dask operator manifests and a CronJob) and the
container images (deploy/docker/), checked without a Kubernetes cluster or docker (neither
is available where these tests run: nothing here was applied to a cluster or built):

* every manifest's fields are walked against the field names and types of the Dask
  operator's CRDs (and, for the native kinds, of the Kubernetes API), as the API server's
  schema validation would;
* every command a container runs is parsed by the parser of the program it names
  (``rifscale``'s argparse parser, ``dask worker`` / ``dask scheduler``'s click options),
  with the image's ENTRYPOINT when the container gives only ``args``;
* resources agree: container memory limits and the workers' ``--memory-limit``, GPU limits
  and the ``GPU`` Dask resource, ports and the Service, volumes and the claim, labels and
  the NetworkPolicy;
* the CronJob's shell script runs for real, here, against a LocalCluster on two "days".
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dask.utils import parse_bytes

import rifscale
from rifscale.cli import build_parser
from rifscale.testing import make_problem

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
DOCKER = ROOT / "deploy" / "docker"
BIN = Path(sys.executable).parent

# --- the schema -------------------------------------------------------------------------
# Field names and types of the Dask operator's custom resources, from dask/dask-kubernetes
# at commit 1daa175f33554549a65530a26300f46368083e7e (2025-07-04):
#   dask_kubernetes/operator/customresources/{daskcluster,daskworkergroup,daskjob}.yaml and
#   dask_kubernetes/operator/customresources/templates.yaml (DaskCluster, DaskScheduler,
#   DaskWorker, SimpleObjectMeta), whose pod and service specs are the Kubernetes 1.21.1
#   PodSpec and ServiceSpec, as resolved in
#   dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds/*.yaml.
# Note what that resolution makes of them: resource quantities and int-or-string ports are
# `type: string` there, so `nvidia.com/gpu: 1` (an integer) is rejected: write "1".
# The native kinds (CronJob, PersistentVolumeClaim, NetworkPolicy) follow the Kubernetes
# API reference (batch/v1, core/v1, networking.k8s.io/v1), with the same PodSpec.
STR, INT, BOOL, MAP, ANY = "<string>", "<integer>", "<boolean>", "<map of strings>", "<not walked>"


def _fields(names: str, **typed) -> dict:
    """Every field name of an object (given as a space-separated string; ANY = accepted but
    not walked further), with the types of those the recipes use."""
    out = dict.fromkeys(names.split(), ANY)
    assert set(typed) <= set(out), set(typed) - set(out)
    return out | typed


TYPES = {
    # the operator's resources
    "DaskCluster": _fields("apiVersion kind metadata spec status", apiVersion=STR, kind=STR, metadata="ObjectMeta",
                           spec="DaskClusterSpec"),
    "DaskClusterSpec": _fields("idleTimeout scheduler worker", idleTimeout=INT, scheduler="DaskScheduler",
                               worker="DaskWorker"),
    "DaskScheduler": _fields("metadata spec service", metadata="SimpleObjectMeta", spec="PodSpec",
                             service="ServiceSpec"),
    "DaskWorker": _fields("replicas metadata spec", replicas=INT, metadata="SimpleObjectMeta", spec="PodSpec"),
    "DaskWorkerGroup": _fields("apiVersion kind metadata spec status", apiVersion=STR, kind=STR,
                               metadata="ObjectMeta", spec="DaskWorkerGroupSpec"),
    "DaskWorkerGroupSpec": _fields("cluster worker", cluster=STR, worker="DaskWorker"),
    "DaskJob": _fields("apiVersion kind metadata spec status", apiVersion=STR, kind=STR, metadata="ObjectMeta",
                       spec="DaskJobSpec"),
    "DaskJobSpec": _fields("job cluster", job="DaskJobRunner", cluster="DaskClusterOfJob"),
    "DaskJobRunner": _fields("metadata spec", metadata="SimpleObjectMeta", spec="PodSpec"),
    "DaskClusterOfJob": _fields("spec status", spec="DaskClusterSpec"),  # templates.yaml DaskCluster: no metadata
    "SimpleObjectMeta": _fields("annotations labels", annotations=MAP, labels=MAP),
    # Kubernetes 1.21.1 (as resolved into the CRDs)
    "ObjectMeta": _fields("name namespace labels annotations", name=STR, namespace=STR, labels=MAP, annotations=MAP),
    "PodSpec": _fields(
        "activeDeadlineSeconds affinity automountServiceAccountToken containers dnsConfig dnsPolicy "
        "enableServiceLinks ephemeralContainers hostAliases hostIPC hostNetwork hostPID hostname imagePullSecrets "
        "initContainers nodeName nodeSelector overhead preemptionPolicy priority priorityClassName readinessGates "
        "restartPolicy runtimeClassName schedulerName securityContext serviceAccount serviceAccountName "
        "setHostnameAsFQDN shareProcessNamespace subdomain terminationGracePeriodSeconds tolerations "
        "topologySpreadConstraints volumes",
        containers=["Container"], initContainers=["Container"], volumes=["Volume"],
        securityContext="PodSecurityContext", tolerations=["Toleration"], nodeSelector=MAP, restartPolicy=STR,
        serviceAccountName=STR, terminationGracePeriodSeconds=INT, activeDeadlineSeconds=INT, priorityClassName=STR),
    "Container": _fields(
        "args command env envFrom image imagePullPolicy lifecycle livenessProbe name ports readinessProbe "
        "resources securityContext startupProbe stdin stdinOnce terminationMessagePath terminationMessagePolicy "
        "tty volumeDevices volumeMounts workingDir",
        args=[STR], command=[STR], env=["EnvVar"], image=STR, imagePullPolicy=STR, livenessProbe="Probe",
        name=STR, ports=["ContainerPort"], readinessProbe="Probe", startupProbe="Probe",
        resources="ResourceRequirements", securityContext="SecurityContext", volumeMounts=["VolumeMount"],
        workingDir=STR),
    "ContainerPort": _fields("containerPort hostIP hostPort name protocol", containerPort=INT, hostPort=INT,
                             name=STR, protocol=STR),
    "EnvVar": _fields("name value valueFrom", name=STR, value=STR),
    "ResourceRequirements": _fields("limits requests", limits=MAP, requests=MAP),
    "VolumeMount": _fields("mountPath mountPropagation name readOnly subPath subPathExpr", mountPath=STR, name=STR,
                           readOnly=BOOL, subPath=STR),
    "Volume": _fields(
        "awsElasticBlockStore azureDisk azureFile cephfs cinder configMap csi downwardAPI emptyDir ephemeral fc "
        "flexVolume flocker gcePersistentDisk gitRepo glusterfs hostPath iscsi name nfs persistentVolumeClaim "
        "photonPersistentDisk portworxVolume projected quobyte rbd scaleIO secret storageos vsphereVolume",
        name=STR, persistentVolumeClaim="PVCVolumeSource", emptyDir="EmptyDirVolumeSource"),
    "PVCVolumeSource": _fields("claimName readOnly", claimName=STR, readOnly=BOOL),
    "EmptyDirVolumeSource": _fields("medium sizeLimit", medium=STR, sizeLimit=STR),
    "Probe": _fields(
        "exec failureThreshold httpGet initialDelaySeconds periodSeconds successThreshold tcpSocket "
        "terminationGracePeriodSeconds timeoutSeconds",
        failureThreshold=INT, httpGet="HTTPGetAction", initialDelaySeconds=INT, periodSeconds=INT,
        successThreshold=INT, timeoutSeconds=INT),
    "HTTPGetAction": _fields("host httpHeaders path port scheme", path=STR, port=STR, scheme=STR),
    "PodSecurityContext": _fields(
        "fsGroup fsGroupChangePolicy runAsGroup runAsNonRoot runAsUser seLinuxOptions seccompProfile "
        "supplementalGroups sysctls windowsOptions",
        fsGroup=INT, runAsGroup=INT, runAsNonRoot=BOOL, runAsUser=INT),
    "SecurityContext": _fields(
        "allowPrivilegeEscalation capabilities privileged procMount readOnlyRootFilesystem runAsGroup runAsNonRoot "
        "runAsUser seLinuxOptions seccompProfile windowsOptions",
        allowPrivilegeEscalation=BOOL, readOnlyRootFilesystem=BOOL, runAsNonRoot=BOOL, runAsUser=INT),
    "Toleration": _fields("effect key operator tolerationSeconds value", effect=STR, key=STR, operator=STR,
                          value=STR),
    "ServiceSpec": _fields(
        "allocateLoadBalancerNodePorts clusterIP clusterIPs externalIPs externalName externalTrafficPolicy "
        "healthCheckNodePort internalTrafficPolicy ipFamilies ipFamilyPolicy loadBalancerClass loadBalancerIP "
        "loadBalancerSourceRanges ports publishNotReadyAddresses selector sessionAffinity sessionAffinityConfig "
        "topologyKeys type",
        ports=["ServicePort"], selector=MAP, type=STR),
    "ServicePort": _fields("appProtocol name nodePort port protocol targetPort", name=STR, nodePort=INT, port=INT,
                           protocol=STR, targetPort=STR),
    # native kinds (Kubernetes API reference)
    "CronJob": _fields("apiVersion kind metadata spec status", apiVersion=STR, kind=STR, metadata="ObjectMeta",
                       spec="CronJobSpec"),
    "CronJobSpec": _fields(
        "concurrencyPolicy failedJobsHistoryLimit jobTemplate schedule startingDeadlineSeconds "
        "successfulJobsHistoryLimit suspend timeZone",
        concurrencyPolicy=STR, failedJobsHistoryLimit=INT, jobTemplate="JobTemplateSpec", schedule=STR,
        startingDeadlineSeconds=INT, successfulJobsHistoryLimit=INT, suspend=BOOL, timeZone=STR),
    "JobTemplateSpec": _fields("metadata spec", metadata="ObjectMeta", spec="JobSpec"),
    "JobSpec": _fields(
        "activeDeadlineSeconds backoffLimit backoffLimitPerIndex completionMode completions managedBy "
        "manualSelector maxFailedIndexes parallelism podFailurePolicy podReplacementPolicy selector successPolicy "
        "suspend template ttlSecondsAfterFinished",
        activeDeadlineSeconds=INT, backoffLimit=INT, completions=INT, parallelism=INT, template="PodTemplateSpec",
        ttlSecondsAfterFinished=INT),
    "PodTemplateSpec": _fields("metadata spec", metadata="ObjectMeta", spec="PodSpec"),
    "PersistentVolumeClaim": _fields("apiVersion kind metadata spec status", apiVersion=STR, kind=STR,
                                     metadata="ObjectMeta", spec="PVCSpec"),
    "PVCSpec": _fields(
        "accessModes dataSource dataSourceRef resources selector storageClassName volumeAttributesClassName "
        "volumeMode volumeName",
        accessModes=[STR], resources="ResourceRequirements", storageClassName=STR, volumeMode=STR),
    "NetworkPolicy": _fields("apiVersion kind metadata spec", apiVersion=STR, kind=STR, metadata="ObjectMeta",
                             spec="NetworkPolicySpec"),
    "NetworkPolicySpec": _fields("egress ingress podSelector policyTypes", ingress=["NetworkPolicyIngressRule"],
                                 podSelector="LabelSelector", policyTypes=[STR]),
    "NetworkPolicyIngressRule": _fields("from ports", **{"from": ["NetworkPolicyPeer"]}),
    "NetworkPolicyPeer": _fields("ipBlock namespaceSelector podSelector", namespaceSelector="LabelSelector",
                                 podSelector="LabelSelector"),
    "LabelSelector": _fields("matchExpressions matchLabels", matchLabels=MAP),
}
KINDS = {
    ("kubernetes.dask.org/v1", "DaskCluster"), ("kubernetes.dask.org/v1", "DaskWorkerGroup"),
    ("kubernetes.dask.org/v1", "DaskJob"), ("batch/v1", "CronJob"), ("v1", "PersistentVolumeClaim"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
}


def schema_errors(node, spec, path="") -> list[str]:
    if spec == ANY:
        return []
    if isinstance(spec, list):
        if not isinstance(node, list):
            return [f"{path}: expected a list, got {type(node).__name__}"]
        return [e for i, item in enumerate(node) for e in schema_errors(item, spec[0], f"{path}[{i}]")]
    leaf = {STR: str, INT: int, BOOL: bool}.get(spec)
    if leaf is not None:
        if not isinstance(node, leaf) or (leaf is int and isinstance(node, bool)):
            return [f"{path}: expected {spec}, got {node!r} ({type(node).__name__})"]
        return []
    if spec == MAP:
        if not isinstance(node, dict):
            return [f"{path}: expected a map"]
        return [f"{path}.{k}: expected a string, got {v!r} ({type(v).__name__}): quote it" for k, v in node.items()
                if not isinstance(v, str)]
    if not isinstance(node, dict):
        return [f"{path}: expected an object ({spec}), got {type(node).__name__}"]
    fields = TYPES[spec]
    errors = []
    for key, value in node.items():
        if key not in fields:
            errors.append(f"{path}.{key}: not a field of {spec} (fields: {', '.join(sorted(fields))})")
        else:
            errors.extend(schema_errors(value, fields[key], f"{path}.{key}"))
    return errors


# --- the manifests ------------------------------------------------------------------------

MANIFEST_FILES = sorted(K8S.glob("*.yaml"))


def _documents():
    docs = []
    for path in MANIFEST_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


DOCS = _documents()


def by_kind(kind):
    return [doc for _, doc in DOCS if doc["kind"] == kind]


def pods(doc):
    """(where, role, pod spec) for every pod the resource makes; role is scheduler,
    worker, runner or client."""
    kind = doc["kind"]
    if kind == "DaskCluster":
        yield "spec.scheduler.spec", "scheduler", doc["spec"]["scheduler"]["spec"]
        yield "spec.worker.spec", "worker", doc["spec"]["worker"]["spec"]
    elif kind == "DaskWorkerGroup":
        yield "spec.worker.spec", "worker", doc["spec"]["worker"]["spec"]
    elif kind == "DaskJob":
        cluster = doc["spec"]["cluster"]["spec"]
        yield "spec.job.spec", "runner", doc["spec"]["job"]["spec"]
        yield "spec.cluster.spec.scheduler.spec", "scheduler", cluster["scheduler"]["spec"]
        yield "spec.cluster.spec.worker.spec", "worker", cluster["worker"]["spec"]
    elif kind == "CronJob":
        yield "spec.jobTemplate.spec.template.spec", "client", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers():
    for _, doc in DOCS:
        for where, role, spec in pods(doc):
            for c in spec["containers"]:
                yield doc, where, role, spec, c


# --- the images ---------------------------------------------------------------------------

DOCKERFILES = {"Dockerfile": "rifscale", "gpu.Dockerfile": "rifscale-gpu"}  # file -> image name


def dockerfile(name) -> list[tuple[str, str]]:
    """(instruction, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def entrypoint(image: str) -> list[str]:
    name = image.rsplit("/", 1)[-1].split(":")[0]
    (file,) = [f for f, n in DOCKERFILES.items() if n == name]
    (ep,) = [json.loads(rest) for instr, rest in dockerfile(file) if instr == "ENTRYPOINT"]
    return ep


def argv_of(container) -> list[str]:
    """What the container runs: its command (or the image's ENTRYPOINT) and its args."""
    return list(container.get("command") or entrypoint(container["image"])) + list(container.get("args", []))


def rifscale_argvs(argv) -> list[list[str]]:
    """The rifscale command lines a container runs: argv itself, or those in its shell script."""
    if argv[0] == "rifscale":
        return [argv[1:]]
    if argv[:2] in (["/bin/sh", "-c"], ["/bin/bash", "-c"], ["sh", "-c"], ["bash", "-c"]):
        found = []
        for line in argv[2].splitlines():
            for m in re.finditer(r"(?:^\s*|\$\(|\bexec\s+|\|\s*)rifscale\s+([^|)\n]*)", line):
                found.append(shlex.split(m.group(1)))
        return found
    return []


def parse_rifscale(args):
    try:
        return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"`rifscale {shlex.join(args)}` is not a valid rifscale command line")


def dask_options(argv):
    """``dask worker`` / ``dask scheduler`` options as their own (click) parser reads them."""
    from distributed.cli.dask_scheduler import main as scheduler
    from distributed.cli.dask_worker import main as worker

    assert argv[0] == "dask" and argv[1] in ("worker", "scheduler"), argv
    cli = worker if argv[1] == "worker" else scheduler
    return cli.make_context(f"dask {argv[1]}", argv[2:]).params


def quantity(q: str) -> float:
    """A Kubernetes quantity (16Gi, 500m, 4) as a number."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", q)
    assert m, f"not a Kubernetes quantity: {q!r}"
    scale = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9,
             "T": 1e12}
    return float(m.group(1)) * scale[m.group(2)]


# --- tests: schema ------------------------------------------------------------------------


def test_the_manifests_are_the_expected_kinds():
    kinds = [(doc["apiVersion"], doc["kind"]) for _, doc in DOCS]
    assert set(kinds) <= KINDS, set(kinds) - KINDS
    for kind in ("DaskCluster", "DaskWorkerGroup", "DaskJob", "CronJob", "PersistentVolumeClaim", "NetworkPolicy"):
        assert by_kind(kind), kind
    names = [(doc["kind"], doc["metadata"]["name"]) for _, doc in DOCS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", [p.name for p in MANIFEST_FILES])
def test_every_field_is_one_the_crd_or_api_defines(name):
    for file, doc in DOCS:
        if file == name:
            assert schema_errors(doc, doc["kind"], doc["kind"]) == []


def test_the_schema_walk_catches_misplaced_and_mistyped_fields():
    """The walk itself: mistakes one makes writing these by hand are reported."""
    (cluster,) = by_kind("DaskCluster")
    (group,) = by_kind("DaskWorkerGroup")
    bad = json.loads(json.dumps(cluster))
    bad["spec"]["worker"]["spec"]["replicas"] = 2  # replicas belongs to spec.worker
    bad["spec"]["workers"] = bad["spec"].pop("worker")  # a typo
    bad["spec"]["scheduler"]["service"]["ports"][0]["port"] = "8786"  # a string where an integer goes
    errors = schema_errors(bad, "DaskCluster", "DaskCluster")
    assert any(e.startswith("DaskCluster.spec.workers: not a field of DaskClusterSpec") for e in errors)
    assert any("DaskCluster.spec.scheduler.service.ports[0].port: expected <integer>" in e for e in errors)
    del bad["spec"]["workers"]
    bad["spec"]["worker"] = {"spec": {"replicas": 2, "containers": []}}
    assert any(e.startswith("DaskCluster.spec.worker.spec.replicas: not a field of PodSpec")
               for e in schema_errors(bad, "DaskCluster", "DaskCluster"))
    bad = json.loads(json.dumps(group))
    bad["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 1
    assert schema_errors(bad, "DaskWorkerGroup", "G") == [
        "G.spec.worker.spec.containers[0].resources.limits.nvidia.com/gpu: expected a string, got 1 (int): quote it"]
    bad["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1"
    bad["spec"]["worker"]["spec"]["containers"][0]["resource"] = {}
    assert len(schema_errors(bad, "DaskWorkerGroup", "G")) == 1


# --- tests: what the containers run -------------------------------------------------------


def test_every_rifscale_command_is_a_real_subcommand_with_real_options():
    seen = {}
    for doc, where, role, spec, c in containers():
        argv = argv_of(c)
        if argv[0] == "dask":
            continue
        commands = rifscale_argvs(argv)
        assert commands, f"{doc['kind']} {where}: runs {argv[:3]}, which is neither rifscale nor dask"
        for args in commands:
            parsed = parse_rifscale(args)
            seen.setdefault(doc["kind"], []).append(parsed)
    # the DaskJob runs `rifscale run` on the operator's scheduler
    (run,) = seen["DaskJob"]
    assert run.command == "run" and run.scheduler == "$(DASK_SCHEDULER_ADDRESS)"
    assert run.corpus.startswith("/data/") and run.out.startswith("/data/")
    # the CronJob lists the runs, then runs with and without --warm-start
    cron = seen["CronJob"]
    assert [p.command for p in cron] == ["runs", "run", "run"]
    assert cron[0].json and [p.warm_start for p in cron[1:]] == ["$prev", None]
    assert all(p.scheduler == "$DASK_SCHEDULER_ADDRESS" for p in cron[1:])


def test_the_rifscale_command_check_catches_a_wrong_option():
    script = "x=$(rifscale runs /d --json)\nexec rifscale run c --out o --warmstart r"
    assert rifscale_argvs(["/bin/sh", "-c", script]) == [
        ["runs", "/d", "--json"], ["run", "c", "--out", "o", "--warmstart", "r"]]
    with pytest.raises(pytest.fail.Exception, match="not a valid rifscale command line"):
        parse_rifscale(["run", "c", "--out", "o", "--warmstart", "r"])


def test_dask_processes_name_their_command_and_use_real_options():
    """The images' entrypoint is rifscale: a scheduler or worker container must name `dask`
    as its command, or it would run `rifscale dask-worker ...`."""
    for doc, where, role, spec, c in containers():
        argv = argv_of(c)
        if role in ("scheduler", "worker"):
            assert c.get("command", [])[:2] == ["dask", role], (doc["kind"], where, c.get("command"))
            dask_options(argv)  # raises on an unknown option or a missing value
        else:
            assert argv[0] != "dask"


def test_workers_memory_threads_and_dashboard_fit_their_containers():
    for doc, where, role, spec, c in containers():
        if role != "worker":
            continue
        opts = dask_options(argv_of(c))
        limits, requests = c["resources"]["limits"], c["resources"]["requests"]
        memory = quantity(limits["memory"])
        worker_memory = parse_bytes(opts["memory_limit"])
        # dask's limit below the container's (else the kernel kills the worker before dask
        # spills or pauses), but not far below (memory paid for and never used)
        assert 0.8 * memory <= worker_memory < memory, (doc["kind"], where, opts["memory_limit"], limits["memory"])
        assert quantity(requests["memory"]) == memory  # guaranteed, not evicted under pressure
        assert opts["nthreads"] <= quantity(limits["cpu"])
        assert opts["scheduler"] == "$(DASK_SCHEDULER_ADDRESS)"
        port = int(opts["dashboard_address"].rsplit(":", 1)[1])
        assert {"name": "http-dashboard", "containerPort": port, "protocol": "TCP"} in c["ports"]
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert opts["local_directory"] in mounts.values()


def test_gpu_workers_ask_for_a_gpu_and_advertise_the_gpu_resource_and_only_they():
    gpu_workers = 0
    for doc, where, role, spec, c in containers():
        limits, requests = c["resources"]["limits"], c["resources"]["requests"]
        gpus = limits.get("nvidia.com/gpu")
        resources = dask_options(argv_of(c)).get("resources") if role == "worker" else None
        image = c["image"].rsplit("/", 1)[-1].split(":")[0]
        if gpus is None:
            assert resources is None or "GPU" not in resources, (doc["kind"], where)
            assert image == "rifscale", (doc["kind"], where, "the GPU image only where there is a GPU")
            continue
        gpu_workers += 1
        assert role == "worker", (doc["kind"], where)
        assert gpus == "1" and requests.get("nvidia.com/gpu") == gpus  # extended resources: requests = limits
        assert resources == "GPU=1", (doc["kind"], where, resources)
        assert image == "rifscale-gpu"  # CuPy is in the GPU image only
        assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))
    assert gpu_workers == 1


def test_images_are_the_project_images_of_one_version():
    tags = set()
    for doc, where, role, spec, c in containers():
        repo, _, tag = c["image"].rpartition(":")
        assert repo.rsplit("/", 1)[-1] in DOCKERFILES.values(), c["image"]
        tags.add(tag)
    # one version everywhere: client, scheduler and workers must run the same dask
    assert tags == {rifscale.__version__}


def test_schedulers_ports_probes_and_service_agree():
    for _, doc in DOCS:
        if doc["kind"] not in ("DaskCluster", "DaskJob"):
            continue
        spec = doc["spec"] if doc["kind"] == "DaskCluster" else doc["spec"]["cluster"]["spec"]
        (c,) = spec["scheduler"]["spec"]["containers"]
        opts = dask_options(argv_of(c))
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        dashboard = int(opts["dashboard_address"].rsplit(":", 1)[1])
        assert ports == {"tcp-comm": int(opts["port"]), "http-dashboard": dashboard}
        assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}  # where the operator and clients look
        for probe in (c["readinessProbe"], c["livenessProbe"]):
            assert probe["httpGet"] == {"port": "http-dashboard", "path": "/health"}
        service = spec["scheduler"]["service"]
        assert service["type"] == "ClusterIP"  # never NodePort/LoadBalancer: the protocol runs what it is sent
        assert service["selector"] == {"dask.org/cluster-name": doc["metadata"]["name"],
                                       "dask.org/component": "scheduler"}
        assert {(p["name"], p["port"], p["targetPort"]) for p in service["ports"]} == {
            ("tcp-comm", 8786, "tcp-comm"), ("http-dashboard", 8787, "http-dashboard")}


def test_the_gpu_group_and_the_cronjob_use_the_standing_cluster():
    (cluster,) = by_kind("DaskCluster")
    (group,) = by_kind("DaskWorkerGroup")
    assert group["spec"]["cluster"] == cluster["metadata"]["name"]
    (cron,) = by_kind("CronJob")
    (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    # the operator names the scheduler's Service CLUSTER-scheduler
    assert env["DASK_SCHEDULER_ADDRESS"] == f"tcp://{cluster['metadata']['name']}-scheduler:8786"


def test_the_daskjob_runner_is_not_restarted_in_a_loop():
    (job,) = by_kind("DaskJob")
    assert job["spec"]["job"]["spec"]["restartPolicy"] == "Never"
    (run,) = [parse_rifscale(a) for a in rifscale_argvs(argv_of(job["spec"]["job"]["spec"]["containers"][0]))]
    assert run.timeout >= 300  # the workers may still be pulling their image


# --- tests: storage, users, network -------------------------------------------------------


def test_every_pod_that_touches_data_mounts_the_shared_claim():
    (pvc,) = by_kind("PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # workers on many nodes write runs
    for doc, where, role, spec, c in containers():
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", [])
                  if "persistentVolumeClaim" in v}
        assert set(claims.values()) <= {pvc["metadata"]["name"]}
        if role == "scheduler":
            continue  # the scheduler reads no data
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert claims.get(mounts.get("/data")) == pvc["metadata"]["name"], (doc["kind"], where)


def test_pods_run_as_the_images_user():
    users = {}
    for file in DOCKERFILES:
        (user,) = [rest for instr, rest in dockerfile(file) if instr == "USER"]
        users[file] = int(user.split(":")[0])
    assert set(users.values()) == {1000}
    for doc, where, role, spec, c in containers():
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 1000, (doc["kind"], where)
        if any("persistentVolumeClaim" in v for v in spec.get("volumes", [])):
            assert ctx["fsGroup"] == 1000  # can write the runs on the claim


def test_the_network_policy_covers_every_dask_pod_and_lets_the_clients_in():
    (policy,) = by_kind("NetworkPolicy")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    (peer_pods,) = [p["podSelector"]["matchLabels"] for p in policy["spec"]["ingress"][0]["from"] if "podSelector" in p]
    # labels of the Dask resources reach their pods (the operator copies them); the
    # CronJob's pods carry their template's labels
    for _, doc in DOCS:
        if doc["kind"] in ("DaskCluster", "DaskWorkerGroup", "DaskJob"):
            labels = doc["metadata"].get("labels", {})
            assert selector.items() <= labels.items(), (doc["kind"], "not covered by the policy")
            assert peer_pods.items() <= labels.items()
    (cron,) = by_kind("CronJob")
    assert peer_pods.items() <= cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"].items()


# --- tests: the CronJob --------------------------------------------------------------------

CRON_FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def valid_cron(expr: str) -> bool:
    fields = expr.split()
    if len(fields) != 5:
        return False
    for field, (lo, hi) in zip(fields, CRON_FIELDS):
        for part in field.split(","):
            m = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
            if not m:
                return False
            a, b, step = m.group(2), m.group(3), m.group(4)
            values = [int(v) for v in (a, b) if v is not None]
            if any(not lo <= v <= hi for v in values) or (b is not None and int(a) > int(b)) or step == "0":
                return False
    return True


def test_cron_expression_check():
    assert valid_cron("30 2 * * *") and valid_cron("*/15 0-6 1,15 * 1-5")
    for bad in ("30 2 * *", "60 2 * * *", "30 24 * * *", "30 2 0 * *", "30 2 * 13 *", "5-1 * * * *", "*/0 * * * *",
                "@daily x", "30 2 * * * *"):
        assert not valid_cron(bad), bad


def test_the_cronjob_is_scheduled_and_never_races_itself():
    (cron,) = by_kind("CronJob")
    spec = cron["spec"]
    assert valid_cron(spec["schedule"])
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] < 24 * 3600  # done before the next night


def _cron_script():
    (cron,) = by_kind("CronJob")
    (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return argv_of(c)


@pytest.mark.cluster
def test_the_cronjob_script_writes_dated_runs_and_warm_starts_from_the_previous_day(cluster, tmp_path):
    """The container's own command, run here by /bin/sh with `date` stubbed to a given day,
    against a LocalCluster: day one starts cold, day two warm-starts from day one, a
    retry of day two finds its run complete."""
    argv = _cron_script()
    assert argv[:2] == ["/bin/sh", "-c"]
    pr = make_problem(160, 10, n_test=40, seed=77)
    corpus = tmp_path / "corpus.zarr"
    rifscale.ingest(corpus, train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=40)
    runs = tmp_path / "runs"
    stub = tmp_path / "stub-bin"
    stub.mkdir()
    (stub / "date").write_text('#!/bin/sh\necho "$FAKE_DAY"\n')
    (stub / "date").chmod(0o755)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RUNS": str(runs), "CORPUS": str(corpus),
           "DASK_SCHEDULER_ADDRESS": cluster.scheduler_address,
           "PATH": os.pathsep.join([str(stub), str(BIN), os.environ["PATH"]])}

    def night(day):
        done = subprocess.run(argv, env={**env, "FAKE_DAY": day}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    assert "no earlier complete run" in night("2031-01-01")
    first = json.loads((runs / "2031-01-01" / "manifest.json").read_text())
    assert first["status"] == "complete" and "warm_start" not in first
    out = night("2031-01-02")
    assert f"warm start from {runs / '2031-01-01'}" in out
    second = json.loads((runs / "2031-01-02" / "manifest.json").read_text())
    assert second["status"] == "complete"
    assert second["warm_start"]["run"] == str(runs / "2031-01-01")
    assert second["fit"]["n_iter"] < first["fit"]["n_iter"]  # started at the optimum of the same corpus
    assert "already complete" in night("2031-01-02")  # a retried pod does nothing twice
    # a run of a later day is never the warm start of an earlier one
    (runs / "2031-01-02").rename(runs / "2031-02-01")
    assert f"warm start from {runs / '2031-01-01'}" in night("2031-01-03")


# --- tests: the Dockerfiles ----------------------------------------------------------------


@pytest.mark.parametrize("file", list(DOCKERFILES))
def test_dockerfile_copies_files_that_exist_and_its_build_context_keeps(file):
    steps = dockerfile(file)
    copies = [shlex.split(rest) for instr, rest in steps if instr == "COPY"]
    assert copies
    ignore = (DOCKER / f"{file}.dockerignore").read_text().splitlines()
    kept = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    assert "*" in ignore  # everything else stays out of the build context (.venv, runs...)
    for args in copies:
        for src in args[:-1]:
            assert (ROOT / src).exists(), f"{file}: COPY {src}: no such file in the repository"
            assert src.rstrip("/") in kept, f"{file}: COPY {src}, but {file}.dockerignore leaves it out"
    # pyproject's readme and license files are among them (the build of the package needs them)
    project = pyproject()
    copied = {src.rstrip("/") for args in copies for src in args[:-1]}
    assert {project["readme"], *project["license-files"], "pyproject.toml", "rifscale"} <= copied


@pytest.mark.parametrize("file", list(DOCKERFILES))
def test_dockerfile_installs_the_project_and_enters_the_console_script(file):
    steps = dockerfile(file)
    project = pyproject()
    (ep,) = [json.loads(rest) for instr, rest in steps if instr == "ENTRYPOINT"]
    assert ep == ["rifscale"] and project["scripts"]["rifscale"] == "rifscale.cli:console_main"
    installs = [rest for instr, rest in steps if instr == "RUN" and "pip install" in rest]
    assert len(installs) == 1
    users = [rest for instr, rest in steps if instr == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    (base,) = [rest for instr, rest in steps if instr == "FROM"]
    if file == "Dockerfile":
        assert re.fullmatch(r"python:3\.\d+-slim", base)
        assert re.search(r"pip install \.(\s|$)", installs[0])
    else:
        assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-runtime-ubuntu\d\d\.\d\d", base)
        assert 'pip install ".[gpu]"' in installs[0]
        assert any(dep.startswith("cupy-cuda12x") for dep in project["optional-dependencies"]["gpu"])


def test_both_images_have_one_python_version():
    """Workers of one cluster unpickle each other's data: the CPU and GPU images must run
    the same Python (Ubuntu 24.04's python3 is 3.12)."""
    ubuntu_python = {"22.04": "3.10", "24.04": "3.12"}
    (cpu,) = [rest for instr, rest in dockerfile("Dockerfile") if instr == "FROM"]
    (gpu,) = [rest for instr, rest in dockerfile("gpu.Dockerfile") if instr == "FROM"]
    cpu_python = re.fullmatch(r"python:(3\.\d+)-slim", cpu).group(1)
    gpu_python = ubuntu_python[re.search(r"ubuntu(\d\d\.\d\d)$", gpu).group(1)]
    assert cpu_python == gpu_python
