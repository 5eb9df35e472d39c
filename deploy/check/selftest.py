"""Planted-error self-test of the manifest checks (deploy/check/README.md).

The unmodified deploy/k8s must pass. Then, for each plant below, a fresh copy of deploy/k8s
gets exactly one error and the check of one target must FAIL with a line containing every
expected piece (target, object, field, message). A plant that passes is a check that does not
work; a plant whose target no longer renders the planted object fails here too (its expected
line is missing). Exits 1 if the clean tree fails or any plant is not caught."""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from elfcheck import cel, kubectl, runner  # noqa: E402

HERE = Path(__file__).resolve().parent
JOBSET = "base/jobset.yaml"
CTR = "kubeflow/clustertrainingruntime.yaml"


# ---------------------------------------------------------------- editing helpers


def sub(tree: Path, rel: str, old: str, new: str, nth: int = 0) -> None:
    """Replaces the nth occurrence of `old` in a file; the plant fails if there is none."""
    p = tree / rel
    s = p.read_text()
    i = -1
    for _ in range(nth + 1):
        i = s.find(old, i + 1)
        if i < 0:
            raise AssertionError(f"plant: {old!r} (occurrence {nth}) not in {rel}")
    p.write_text(s[:i] + new + s[i + len(old):])


def edit(tree: Path, rel: str, fn: Callable[[list], None]) -> None:
    """Loads a YAML file's documents, lets `fn` change them, writes them back."""
    p = tree / rel
    docs = list(yaml.safe_load_all(p.read_text()))
    fn(docs)
    p.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def rj(docs: list, name: str, spec_path=("spec",)) -> dict:
    spec = docs[0]
    for k in spec_path:
        spec = spec[k]
    return next(r for r in spec["replicatedJobs"] if r["name"] == name)


def pod(docs: list, name: str, spec_path=("spec",)) -> dict:
    return rj(docs, name, spec_path)["template"]["spec"]["template"]["spec"]


def job(docs: list, name: str) -> dict:
    return rj(docs, name)["template"]["spec"]


def ctr(docs: list, name: str) -> dict:
    return pod(docs, name)["containers"][0]


def js(fn: Callable[[list], None]) -> Callable[[Path], None]:
    """A plant that edits the base JobSet."""
    return lambda tree: edit(tree, JOBSET, fn)


def args_sub(name: str, old: str, new: str) -> Callable[[list], None]:
    def f(docs: list) -> None:
        a = ctr(docs, name)["args"]
        a[a.index(old)] = new
    return f


def add_resource(rel: str, text: str) -> Callable[[Path], None]:
    """A plant that adds a file to the base's resources."""
    def f(tree: Path) -> None:
        (tree / "base" / rel).write_text(text)
        sub(tree, "base/kustomization.yaml", "  - pdb.yaml", f"  - pdb.yaml\n  - {rel}")
    return f


def env(c: dict, name: str) -> dict:
    return next(e for e in c["env"] if e["name"] == name)


# ---------------------------------------------------------------- the plants


@dataclass
class Plant:
    name: str
    target: str
    plant: Callable[[Path], None]
    expect: list[str]


RJ = "spec.replicatedJobs"
W = f"{RJ}[workers].template.spec"
WP = f"{W}.template.spec"
C = f"{RJ}[coordinator].template.spec"
CP = f"{C}.template.spec"

PLANTS = [
    # --- built-in kinds, kubernetes-validate --strict at both versions
    Plant("built-in kind: unknown field", "base",
          lambda t: sub(t, "common/service.yaml", "  type: ClusterIP", "  type: ClusterIP\n  sessionAffinityy: None"),
          ["FAIL base: Service/elf-coordinator spec", "[k8s 1.31 v1 Service] unknown field", "sessionAffinityy"]),
    Plant("built-in kind: wrong type", "base",
          lambda t: sub(t, "common/serviceaccount.yaml", "automountServiceAccountToken: false", 'automountServiceAccountToken: "no"'),
          ["ServiceAccount/elf automountServiceAccountToken", "is not of type 'boolean'"]),
    Plant("built-in kind: no schema is a failure, not a WARN", "base",
          add_resource("extra.yaml", "apiVersion: v1\nkind: Servce\nmetadata:\n  name: typo\n"),
          ["Servce/typo", "no schema for v1 Servce"]),
    Plant("custom kind without a schema is a failure", "base",
          add_resource("extra.yaml", "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: elf\n"),
          ["ServiceMonitor/elf", "no schema for monitoring.coreos.com/v1 ServiceMonitor"]),
    # --- custom resources, strict schemas
    Plant("JobSet: unknown field", "base",
          js(lambda d: d[0]["spec"]["successPolicy"].update(operater="All")),
          ["FAIL base: JobSet/elf spec.successPolicy", "unknown field", "'operater' was unexpected", "jobset.x-k8s.io_jobsets.yaml"]),
    Plant("JobSet: unknown field in an embedded container", "overlays/gpu",
          js(lambda d: ctr(d, "workers").update(imagePullPolicyy="Always")),
          ["FAIL overlays/gpu: JobSet/elf", f"{WP}.containers[worker]", "unknown field", "imagePullPolicyy"]),
    Plant("JobSet: wrong type", "base",
          js(lambda d: job(d, "workers").update(backoffLimitPerIndex="3")),
          ["JobSet/elf", f"{W}.backoffLimitPerIndex", "'3' is not of type 'integer'"]),
    Plant("JobSet: enum", "base",
          js(lambda d: d[0]["spec"]["failurePolicy"]["rules"][0].update(action="FailJobset")),
          ["JobSet/elf spec.failurePolicy.rules[non-retriable].action", "'FailJobset' is not one of"]),
    Plant("custom resource metadata is a strict ObjectMeta", "base",
          js(lambda d: d[0]["metadata"].update(label={"a": "b"})),
          ["JobSet/elf metadata", "[ObjectMeta", "unknown field", "'label' was unexpected"]),
    Plant("PodMonitor: unknown field", "base",
          lambda t: sub(t, "common/podmonitor.yaml", "      path: /metrics", "      paths: /metrics"),
          ["PodMonitor/elf spec.podMetricsEndpoints[0]", "unknown field", "'paths' was unexpected"]),
    Plant("Certificate: unknown field", "overlays/cert-manager",
          lambda t: sub(t, "overlays/cert-manager/certificates.yaml", "  dnsNames:", "  dnsName:"),
          ["Certificate/elf-coordinator spec", "unknown field", "'dnsName' was unexpected"]),
    Plant("Issuer: unknown field", "overlays/cert-manager",
          lambda t: sub(t, "overlays/cert-manager/issuers.yaml", "  selfSigned: {}", "  selfsigned: {}"),
          ["Issuer/elf-selfsigned spec", "unknown field"]),
    Plant("LocalQueue: unknown field", "overlays/kueue",
          lambda t: sub(t, "overlays/kueue/localqueue.yaml", "  clusterQueue:", "  clusterqueue:"),
          ["LocalQueue/elf spec", "unknown field", "'clusterqueue' was unexpected"]),
    Plant("TrainJob: unknown field", "kubeflow",
          lambda t: sub(t, "kubeflow/trainjob.yaml", "    numNodes: 3", "    numNode: 3"),
          ["TrainJob/elf spec.trainer", "unknown field", "'numNode' was unexpected"]),
    # --- CEL rules
    Plant("CEL: JobSet startupPolicy InOrder with dependsOn", "base",
          js(lambda d: (d[0]["spec"].update(startupPolicy={"startupPolicyOrder": "InOrder"}),
                        rj(d, "eval").update(dependsOn=[{"name": "workers", "status": "Ready"}]))),
          ["FAIL base: JobSet/elf spec", "[CEL, crds/jobset.x-k8s.io_jobsets.yaml]", "StartupPolicy and DependsOn"]),
    Plant("CEL: Trainer runtime with two ML policies", "kubeflow",
          lambda t: edit(t, CTR, lambda d: d[0]["spec"]["mlPolicy"].update(torch={}, mpi={})),
          ["ClusterTrainingRuntime/elf spec.mlPolicy", "[CEL, crds/trainer.kubeflow.org_clustertrainingruntimes.yaml]"]),
    Plant("CEL: TrainJob name", "kubeflow",
          lambda t: sub(t, "kubeflow/trainjob.yaml", "  name: elf", "  name: Elf-Run"),
          ["TrainJob/Elf-Run", "[CEL, crds/trainer.kubeflow.org_trainjobs.yaml]"]),
    # --- the JobSet's Job templates as the cluster's own batch/v1 Job
    Plant("Job template: onPodConditions without status (required by batch/v1 up to 1.34)", "base",
          js(lambda d: job(d, "workers")["podFailurePolicy"]["rules"][0]["onPodConditions"][0].pop("status")),
          ["JobSet/elf", f"{W}.podFailurePolicy.rules[0].onPodConditions[0]", "[k8s 1.31 batch/v1 Job", "'status' is a required property"]),
    Plant("Job template: pod-level resources (a field 1.31's PodSpec lacks)", "base",
          js(lambda d: pod(d, "workers").update(resources={"limits": {"cpu": "2", "memory": "4Gi"}})),
          ["JobSet/elf", WP, "[k8s 1.31 batch/v1 Job", "unknown field", "'resources' was unexpected"]),
    Plant("Job template: unknown field in the Job template metadata", "base",
          js(lambda d: rj(d, "eval")["template"].update(metadata={"label": {"a": "b"}})),
          ["JobSet/elf", f"{RJ}[eval].template.metadata", "batch/v1 Job", "unknown field"]),
    # --- batch/v1 Job rules only the API server checks
    Plant("backoffLimitPerIndex needs completionMode Indexed", "base",
          js(lambda d: job(d, "workers").pop("completionMode")),
          [f"JobSet/elf {W}.backoffLimitPerIndex", "requires completionMode Indexed"]),
    Plant("backoffLimitPerIndex needs restartPolicy Never", "base",
          js(lambda d: (job(d, "workers").pop("podFailurePolicy"), pod(d, "workers").update(restartPolicy="OnFailure"))),
          [f"JobSet/elf {W}.backoffLimitPerIndex", "requires the pod restartPolicy Never, got 'OnFailure'"]),
    Plant("podFailurePolicy needs restartPolicy Never", "base",
          js(lambda d: pod(d, "coordinator").update(restartPolicy="OnFailure")),
          [f"JobSet/elf {C}.podFailurePolicy", "requires the pod restartPolicy Never"]),
    Plant("podFailurePolicy needs podReplacementPolicy Failed", "base",
          js(lambda d: job(d, "eval").pop("podReplacementPolicy")),
          [f"JobSet/elf {RJ}[eval].template.spec.podReplacementPolicy", "podFailurePolicy requires podReplacementPolicy Failed"]),
    Plant("podFailurePolicy containerName must exist", "base",
          js(lambda d: job(d, "workers")["podFailurePolicy"]["rules"][1]["onExitCodes"].update(containerName="workr")),
          [f"JobSet/elf {W}.podFailurePolicy.rules[1].onExitCodes.containerName", "no container named 'workr'"]),
    Plant("onExitCodes values in increasing order", "base",
          js(lambda d: job(d, "coordinator")["podFailurePolicy"]["rules"][1]["onExitCodes"].update(values=[3, 2])),
          [f"{C}.podFailurePolicy.rules[1].onExitCodes.values", "increasing order"]),
    Plant("onExitCodes In must not list 0", "base",
          js(lambda d: job(d, "coordinator")["podFailurePolicy"]["rules"][1]["onExitCodes"].update(values=[0, 2, 3])),
          [f"{C}.podFailurePolicy.rules[1].onExitCodes.values", "exit code 0 cannot be used with operator In"]),
    Plant("FailIndex needs backoffLimitPerIndex", "base",
          js(lambda d: job(d, "coordinator")["podFailurePolicy"]["rules"][1].update(action="FailIndex")),
          [f"{C}.podFailurePolicy.rules[1].action", "FailIndex requires backoffLimitPerIndex"]),
    Plant("maxFailedIndexes at most completions", "base",
          js(lambda d: job(d, "workers").update(maxFailedIndexes=4)),
          [f"{W}.maxFailedIndexes", "exceeds completions 3"]),
    # --- pod rules
    Plant("probe names a port the container lacks", "base",
          js(lambda d: ctr(d, "workers")["livenessProbe"]["httpGet"].update(port="htp")),
          [f"JobSet/elf {WP}.containers[worker].livenessProbe.httpGet.port", "probe names port 'htp'"]),
    Plant("port name not an IANA_SVC_NAME", "base",
          js(lambda d: ctr(d, "eval")["ports"][0].update(name="ring-and-transfer")),
          [f"{RJ}[eval].template.spec.template.spec.containers[eval].ports[ring-and-transfer].name", "not a valid port name"]),
    Plant("volumeMount without a volume", "base",
          js(lambda d: ctr(d, "coordinator")["volumeMounts"][0].update(name="configs")),
          [f"{CP}.containers[coordinator].volumeMounts[configs].name", "no volume named 'configs'"]),
    Plant("$(VAR) in args that is not an env var", "base",
          js(args_sub("coordinator", "--run=$(ELF_RUN_URL)", "--run=$(ELF_RUN)")),
          [f"{CP}.containers[coordinator].args[2]", "$(ELF_RUN) is not an env var"]),
    Plant("env var defined twice", "overlays/gpu",
          js(lambda d: ctr(d, "workers")["env"].append({"name": "RUST_LOG", "value": "debug"})),
          [f"{WP}.containers[worker].env", "'RUST_LOG' is defined twice"]),
    # --- references to ConfigMaps, Secrets, ServiceAccounts
    Plant("generated ConfigMap name not rewritten in the JobSet", "base",
          lambda t: sub(t, "common/kustomization.yaml", "configurations:\n  - kustomizeconfig.yaml\n", ""),
          [f"{CP}.volumes[config].configMap.name", "ConfigMap 'elf-config' is not in the rendered output"]),
    Plant("configMapKeyRef key missing", "base",
          js(lambda d: env(ctr(d, "coordinator"), "ELF_RUN_URL")["valueFrom"]["configMapKeyRef"].update(key="run_url")),
          [f"{CP}.containers[coordinator].env[ELF_RUN_URL].valueFrom.configMapKeyRef", "has no key 'run_url'"]),
    Plant("Secret neither created nor documented", "base",
          js(lambda d: pod(d, "workers")["volumes"][0]["secret"].update(secretName="elf-tsl")),
          [f"{WP}.volumes[tls].secret.secretName", "Secret 'elf-tsl'"]),
    Plant("ServiceAccount missing", "base",
          js(lambda d: pod(d, "eval").update(serviceAccountName="elff")),
          [f"{RJ}[eval].template.spec.template.spec.serviceAccountName", "ServiceAccount 'elff'"]),
    Plant("cluster-scoped object with a namespace", "kubeflow",
          lambda t: sub(t, "kubeflow/kustomization.yaml", "resources:", "namespace: elf\n\nresources:"),
          ["ClusterTrainingRuntime/elf metadata.namespace", "cluster-scoped"]),
    # --- security policy
    Plant("policy: read-only root filesystem", "overlays/cpu",
          js(lambda d: ctr(d, "workers")["securityContext"].update(readOnlyRootFilesystem=False)),
          [f"{WP}.containers[worker].securityContext.readOnlyRootFilesystem", "must be true"]),
    Plant("policy: capabilities dropped", "base",
          js(lambda d: ctr(d, "coordinator")["securityContext"].pop("capabilities")),
          [f"{CP}.containers[coordinator].securityContext.capabilities", "must drop ALL"]),
    Plant("policy: no API token", "base",
          js(lambda d: pod(d, "eval").update(automountServiceAccountToken=True)),
          ["automountServiceAccountToken", "must be false"]),
    Plant("policy: resource limits", "base",
          js(lambda d: ctr(d, "workers")["resources"].pop("limits")),
          [f"{WP}.containers[worker].resources.limits", "cpu limit missing"]),
    Plant("policy: immutable ConfigMaps", "base",
          lambda t: sub(t, "common/kustomization.yaml", "immutable: true", "immutable: false"),
          ["ConfigMap/elf-config-", "immutable", "must be immutable"]),
    # --- JobSet webhook
    Plant("JobSet successPolicy names a missing replicated job", "base",
          js(lambda d: d[0]["spec"]["successPolicy"].update(targetReplicatedJobs=["coordinater"])),
          ["spec.successPolicy.targetReplicatedJobs[0]", "no replicated job named 'coordinater'"]),
    Plant("JobSet failure reason unknown", "base",
          js(lambda d: d[0]["spec"]["failurePolicy"]["rules"][0].update(onJobFailureReasons=["PodFailurePolicyy"])),
          ["spec.failurePolicy.rules[non-retriable].onJobFailureReasons[0]", "not a Job failure reason"]),
    Plant("JobSet pod host names over 63 characters", "base",
          js(lambda d: rj(d, "eval").update(name="evaluation-of-each-committed-checkpoint-of-the-run-and-the-end")),
          ["spec.replicatedJobs[evaluation-of-each-committed-checkpoint-of-the-run-and-the-end].name", "not a DNS label"]),
    # --- selectors and named ports
    Plant("Service selector selects nothing", "base",
          lambda t: sub(t, "common/service.yaml", "replicatedjob-name: coordinator", "replicatedjob-name: coordinators"),
          ["Service/elf-coordinator spec.selector", "selects no pod"]),
    Plant("Service targetPort names a missing port", "base",
          lambda t: sub(t, "common/service.yaml", "targetPort: grpc", "targetPort: grpcs"),
          ["Service/elf-coordinator spec.ports[grpc].targetPort", "port name 'grpcs' does not exist"]),
    Plant("PodMonitor port names a missing port", "overlays/kueue",
          lambda t: sub(t, "common/podmonitor.yaml", "    - port: http", "    - port: metrics"),
          ["PodMonitor/elf spec.podMetricsEndpoints[0].port", "port name 'metrics' does not exist"]),
    Plant("PodMonitor port missing on one component", "base",
          js(lambda d: ctr(d, "eval")["ports"][1].update(name="web")),
          ["PodMonitor/elf spec.podMetricsEndpoints[0].port", "port name 'http' does not exist on JobSet/elf spec.replicatedJobs[eval]"]),
    Plant("NetworkPolicy ingress names a missing port", "base",
          lambda t: sub(t, "common/networkpolicy.yaml", "- port: ring", "- port: rings"),
          ["NetworkPolicy/elf spec.ingress[0].ports[1].port", "port name 'rings' exists on none"]),
    Plant("NetworkPolicy egress names a missing port", "base",
          lambda t: sub(t, "common/networkpolicy.yaml", "- port: grpc", "- port: grcp", nth=1),
          ["NetworkPolicy/elf spec.egress[0].ports[0].port", "port name 'grcp' exists on none"]),
    Plant("NetworkPolicy selects nothing", "base",
          lambda t: sub(t, "common/networkpolicy.yaml", "jobset-name: elf", "jobset-name: elv"),
          ["NetworkPolicy/elf spec.podSelector", "selects no pod"]),
    Plant("PodDisruptionBudget selects nothing", "base",
          lambda t: sub(t, "base/pdb.yaml", "replicatedjob-name: workers", "replicatedjob-name: worker"),
          ["PodDisruptionBudget/elf-workers spec.selector", "selects no pod"]),
    Plant("topology spread selects another pod", "base",
          js(lambda d: pod(d, "workers")["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"].update({"jobset.sigs.k8s.io/replicatedjob-name": "eval"})),
          [f"{WP}.topologySpreadConstraints[0].labelSelector", "does not select the pod"]),
    # --- the run's wiring
    Plant("fewer worker slots than workers + failed indexes", "base",
          lambda t: sub(t, "common/kustomization.yaml", "- workers=2", "- workers=3"),
          [f"{W}.completions", "3 worker slots minus maxFailedIndexes 1 is fewer than the 3 workers"]),
    Plant("Trainer: numNodes too small", "kubeflow",
          lambda t: sub(t, "kubeflow/trainjob.yaml", "numNodes: 3", "numNodes: 2"),
          ["ClusterTrainingRuntime/elf", "2 worker slots minus maxFailedIndexes 1 is fewer than the 2 workers"]),
    Plant("worker dials a Service that does not exist", "base",
          js(args_sub("workers", "--coordinator=https://elf-coordinator.$(POD_NAMESPACE).svc:50051", "--coordinator=https://elf-coord.$(POD_NAMESPACE).svc:50051")),
          [f"{WP}.containers[worker].args", "'elf-coord.elf.svc' is not a Service"]),
    Plant("worker dials a port the Service lacks", "base",
          js(args_sub("eval", "--coordinator=https://elf-coordinator.$(POD_NAMESPACE).svc:50051", "--coordinator=https://elf-coordinator.$(POD_NAMESPACE).svc:5051")),
          ["containers[eval].args", "has no port 5051"]),
    Plant("worker dials the Service's HTTP port", "base",
          js(args_sub("workers", "--coordinator=https://elf-coordinator.$(POD_NAMESPACE).svc:50051", "--coordinator=https://elf-coordinator.$(POD_NAMESPACE).svc:8080")),
          ["containers[worker].args", "does not lead to the coordinator's --listen port"]),
    Plant("token mode without a token file", "base",
          js(lambda d: ctr(d, "workers")["args"].remove("--token-file=/var/run/elf/token/token")),
          ["containers[worker].args", "--security=token needs --token-file"]),
    Plant("coordinator TLS Secret reduced to the CA", "base",
          js(lambda d: pod(d, "coordinator")["volumes"][1]["secret"].update(items=[{"key": "ca.crt", "path": "ca.crt"}])),
          ["containers[coordinator].args", "lacks ['tls.crt', 'tls.key']"]),
    Plant("mTLS: worker dials a name not in the server certificate", "overlays/cert-manager",
          lambda t: sub(t, "overlays/cert-manager/certificates.yaml", "    - elf-coordinator.elf.svc\n", ""),
          ["containers[worker].args", "'elf-coordinator.elf.svc' is not among the coordinator certificate's dnsNames"]),
    Plant("mTLS: worker certificate with the wrong role", "overlays/cert-manager",
          lambda t: sub(t, "overlays/cert-manager/certificates.yaml", "      - train", "      - eval"),
          ["Certificate/elf-train spec.subject.organizationalUnits", "the OU must be ['train']"]),
    Plant("mTLS: certificate from a missing Issuer", "overlays/cert-manager",
          lambda t: sub(t, "overlays/cert-manager/certificates.yaml", "    name: elf-ca", "    name: elf-ca-issuer"),
          ["Certificate/elf-coordinator spec.issuerRef.name", "Issuer 'elf-ca-issuer'"]),
    Plant("Kueue: JobSet not suspended", "overlays/kueue",
          lambda t: sub(t, "overlays/kueue/kustomization.yaml", "value: true", "value: false"),
          ["JobSet/elf spec.suspend", "suspend: true"]),
    Plant("Kueue: queue name without a LocalQueue", "overlays/kueue",
          lambda t: sub(t, "overlays/kueue/kustomization.yaml", "value: elf", "value: elf-queue"),
          ["kueue.x-k8s.io/queue-name", "names LocalQueue 'elf-queue'"]),
    # --- rendering
    Plant("overlay patch no longer matches the base", "overlays/cpu",
          js(args_sub("workers", "--threads=2", "--threads=3")),
          ["FAIL overlays/cpu: <kustomization>", "kubectl kustomize failed", "testing value"]),
]


# A schema update that brings a rule cel-python cannot evaluate must fail, not pass silently.
UNSUPPORTED_RULE = {"rule": "self.replicatedJobs.all(r, quantity('1').isLessThan(quantity('2')))",
                    "message": "planted: uses the Kubernetes quantity library"}


def unsupported_cel(ctx: runner.Context, tree: Path) -> list[str]:
    crds = copy.deepcopy(ctx.crds)
    s = crds[("jobset.x-k8s.io/v1alpha2", "JobSet")]
    s.raw["properties"]["spec"].setdefault("x-kubernetes-validations", []).append(UNSUPPORTED_RULE)
    planted = copy.copy(ctx)
    planted.crds = crds
    planted.cel = cel.Evaluator(crds)
    return [f.line() for f in runner.check_target(planted, tree, "base").failures]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-k", help="only plants whose name contains this")
    a = ap.parse_args()
    start = time.monotonic()
    ctx = runner.Context(kubectl.ensure_kubectl(), HERE / "schemas", runner.default_versions())
    src = HERE.parent / "k8s"
    results: list[bool] = []

    def report(name: str, hit: str | None, lines: list[str], expect: list[str]) -> None:
        results.append(hit is not None)
        if hit:
            print(f"ok   {name}\n       {hit}")
        else:
            print(f"FAIL {name}: no failure line with {expect}; the check reported:")
            for line in lines or ["(nothing: it passed)"]:
                print(f"       {line}")

    clean = [f.line() for f in runner.failures(runner.run(ctx, src))]
    results.append(not clean)
    if clean:
        print(f"FAIL the unmodified tree does not pass ({len(clean)} failures):", *clean, sep="\n       ")
    else:
        print(f"ok   the unmodified tree passes ({len(runner.discover(src))} targets)")
    with tempfile.TemporaryDirectory(prefix="elf-selftest-") as tmp:
        for i, p in enumerate(x for x in PLANTS if not a.k or a.k in x.name):
            tree = Path(tmp) / f"plant-{i}"
            shutil.copytree(src, tree)
            try:
                p.plant(tree)
            except Exception as e:  # noqa: BLE001
                report(p.name, None, [f"cannot plant: {e}"], p.expect)
                continue
            lines = [f.line() for f in runner.check_target(ctx, tree, p.target).failures]
            report(p.name, next((x for x in lines if all(e in x for e in p.expect)), None), lines, p.expect)
        name = "CEL: a rule cel-python cannot evaluate fails"
        if not a.k or a.k in name:
            tree = Path(tmp) / "plant-cel"
            shutil.copytree(src, tree)
            expect = ["JobSet/elf spec", "CEL rule not evaluable offline"]
            lines = unsupported_cel(ctx, tree)
            report(name, next((x for x in lines if all(e in x for e in expect)), None), lines, expect)
    bad = results.count(False)
    print(f"{'FAILED' if bad else 'passed'}: {results.count(True)} of {len(results)} cases "
          f"(the unmodified tree and {len(results) - 1} planted errors), {time.monotonic() - start:.1f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
