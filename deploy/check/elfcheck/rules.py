"""Cross-field rules that no schema expresses: what the API server's Go validation, the JobSet
webhook and the kubelet check when the objects reach a cluster, what kustomize can get wrong
silently (a generated name not rewritten), and the run's own wiring (ports, Secrets, the
coordinator's address and certificate, worker counts). Each rule adds one Failure per
violation, naming the object and field."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .model import (
    REPLICATED_JOB,
    VAR_REF,
    Doc,
    PodTemplate,
    Target,
    env_values,
    expand,
    flags,
    pod_templates,
    same_namespace,
    selector_matches,
)

# Secrets the platform engineer creates before applying (deploy/README.md, "Secrets").
EXTERNAL_SECRETS = {"elf-tls", "elf-join-token", "elf-object-store"}
# Job failure reasons a JobSet failure-policy rule may name (JobSet webhook).
JOB_FAILURE_REASONS = {"BackoffLimitExceeded", "DeadlineExceeded", "FailedIndexes", "MaxFailedIndexesExceeded", "PodFailurePolicy"}
CLUSTER_SCOPED_BUILTIN = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass",
                          "CustomResourceDefinition", "PersistentVolume", "ValidatingWebhookConfiguration",
                          "MutatingWebhookConfiguration", "RuntimeClass"}
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?!-))*[a-z0-9]$|^[a-z]$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check(t: Target, crd_scopes: dict[str, str]) -> None:
    """Runs every rule on one rendered target."""
    pods = pod_templates(t.docs)
    scopes(t, crd_scopes)
    for p in pods:
        if p.job_path is not None:
            job_rules(t, p)
        pod_rules(t, p)
        references(t, p)
        security_policy(t, p)
    for d in t.of_kind("JobSet"):
        jobset_rules(t, d, ["spec"])
    for d in t.of_kind("ClusterTrainingRuntime", "TrainingRuntime"):
        jobset_rules(t, d, ["spec", "template", "spec"])
    selectors(t, pods)
    configmaps_immutable(t)
    run_wiring(t, pods)
    certificates(t, pods)
    kueue(t)


# ---------------------------------------------------------------- objects and namespaces


def scopes(t: Target, crd_scopes: dict[str, str]) -> None:
    namespaces = {d.namespace for d in t.docs if d.namespace is not None}
    if len(namespaces) > 1:
        t.fail("<target>", None, "", f"objects in more than one namespace: {sorted(namespaces)} (one run per namespace)")
    for d in t.docs:
        cluster = d.kind in CLUSTER_SCOPED_BUILTIN or crd_scopes.get(d.kind) == "Cluster"
        if cluster and d.namespace is not None:
            t.fail(d, d.obj, ["metadata", "namespace"], f"{d.kind} is cluster-scoped but has a namespace ({d.namespace})")


# ---------------------------------------------------------------- batch/v1 Job (API server)


def job_rules(t: Target, p: PodTemplate) -> None:
    job = p.job or {}
    spec = job.get("spec") or {}
    jp = p.job_path + ["spec"]
    obj = p.doc.obj
    restart = p.spec.get("restartPolicy")
    indexed = spec.get("completionMode") == "Indexed"
    if restart not in ("Never", "OnFailure"):
        t.fail(p.doc, obj, p.path + ["spec", "restartPolicy"], f"a Job's pods need restartPolicy Never or OnFailure, got {restart!r}")
    if "backoffLimitPerIndex" in spec:
        if not indexed:
            t.fail(p.doc, obj, jp + ["backoffLimitPerIndex"], "backoffLimitPerIndex requires completionMode Indexed")
        if restart != "Never":
            t.fail(p.doc, obj, jp + ["backoffLimitPerIndex"], f"backoffLimitPerIndex requires the pod restartPolicy Never, got {restart!r}")
    if "maxFailedIndexes" in spec:
        if "backoffLimitPerIndex" not in spec:
            t.fail(p.doc, obj, jp + ["maxFailedIndexes"], "maxFailedIndexes requires backoffLimitPerIndex")
        if isinstance(spec.get("completions"), int) and spec["maxFailedIndexes"] > spec["completions"]:
            t.fail(p.doc, obj, jp + ["maxFailedIndexes"], f"maxFailedIndexes {spec['maxFailedIndexes']} exceeds completions {spec['completions']}")
    if indexed and not isinstance(spec.get("completions"), int):
        t.fail(p.doc, obj, jp + ["completions"], "completionMode Indexed requires completions")
    pfp = spec.get("podFailurePolicy")
    if pfp is not None:
        if restart != "Never":
            t.fail(p.doc, obj, jp + ["podFailurePolicy"], f"podFailurePolicy requires the pod restartPolicy Never, got {restart!r}")
        if spec.get("podReplacementPolicy") != "Failed":
            t.fail(p.doc, obj, jp + ["podReplacementPolicy"],
                   f"podFailurePolicy requires podReplacementPolicy Failed, got {spec.get('podReplacementPolicy')!r}")
        names = {c.get("name") for _, c in p.containers()}
        for i, rule in enumerate(pfp.get("rules") or []):
            rp = jp + ["podFailurePolicy", "rules", i]
            if rule.get("action") == "FailIndex" and "backoffLimitPerIndex" not in spec:
                t.fail(p.doc, obj, rp + ["action"], "action FailIndex requires backoffLimitPerIndex")
            codes = rule.get("onExitCodes")
            if codes is None:
                continue
            cn = codes.get("containerName")
            if cn is not None and cn not in names:
                t.fail(p.doc, obj, rp + ["onExitCodes", "containerName"], f"no container named {cn!r} in the pod template (has {sorted(names)})")
            vals = codes.get("values") or []
            if vals != sorted(set(vals)):
                t.fail(p.doc, obj, rp + ["onExitCodes", "values"], f"values must be unique and in increasing order, got {vals}")
            if codes.get("operator") == "In" and 0 in vals:
                t.fail(p.doc, obj, rp + ["onExitCodes", "values"], "exit code 0 cannot be used with operator In")


# ---------------------------------------------------------------- pod spec (API server, kubelet)


def pod_rules(t: Target, p: PodTemplate) -> None:
    obj = p.doc.obj
    seen_ports: dict[str, list] = {}
    for cpath, c in p.containers():
        for i, port in enumerate(c.get("ports") or []):
            name = port.get("name")
            if name is None:
                continue
            if not IANA_SVC_NAME.match(name) or len(name) > 15:
                t.fail(p.doc, obj, cpath + ["ports", i, "name"], f"{name!r} is not a valid port name (IANA_SVC_NAME: at most 15 lowercase letters, digits, '-')")
            if name in seen_ports:
                t.fail(p.doc, obj, cpath + ["ports", i, "name"], f"port name {name!r} is used twice in the pod")
            seen_ports[name] = cpath
        own = {port["name"] for port in c.get("ports") or [] if "name" in port}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            pr = c.get(probe) or {}
            for handler in ("httpGet", "tcpSocket", "grpc"):
                port = (pr.get(handler) or {}).get("port")
                if isinstance(port, str) and port not in own:
                    t.fail(p.doc, obj, cpath + [probe, handler, "port"], f"probe names port {port!r}, which container {c.get('name')!r} does not declare (has {sorted(own)})")
        env_names = [e.get("name") for e in c.get("env") or []]
        for dup in sorted({n for n in env_names if env_names.count(n) > 1}):
            t.fail(p.doc, obj, cpath + ["env"], f"env var {dup!r} is defined twice")
        for key in ("command", "args"):
            for i, a in enumerate(c.get(key) or []):
                for m in VAR_REF.finditer(str(a)):
                    if m.group(1) not in env_names:
                        t.fail(p.doc, obj, cpath + [key, i], f"$({m.group(1)}) is not an env var of the container, so it stays literal")
    volumes = [v.get("name") for v in p.spec.get("volumes") or []]
    for dup in sorted({n for n in volumes if volumes.count(n) > 1}):
        t.fail(p.doc, obj, p.path + ["spec", "volumes"], f"volume {dup!r} is defined twice")
    for cpath, c in p.containers():
        for i, m in enumerate(c.get("volumeMounts") or []):
            if m.get("name") not in volumes:
                t.fail(p.doc, obj, cpath + ["volumeMounts", i, "name"], f"no volume named {m.get('name')!r} (has {volumes})")


def references(t: Target, p: PodTemplate) -> None:
    """ConfigMaps, Secrets and the ServiceAccount a pod names exist in the rendered output
    (or, for Secrets, are the ones the README tells you to create)."""
    obj = p.doc.obj
    cms = t.configmaps()
    secrets = EXTERNAL_SECRETS | {((d.obj.get("spec") or {}).get("secretName")) for d in t.of_kind("Certificate")} | {d.name for d in t.of_kind("Secret")}

    def cm(path: list, name: str, optional: bool, key: str | None = None) -> None:
        if name not in cms:
            if not optional:
                t.fail(p.doc, obj, path, f"ConfigMap {name!r} is not in the rendered output (has {sorted(cms)}); a generated name not rewritten?")
        elif key is not None and key not in (cms[name].get("data") or {}):
            t.fail(p.doc, obj, path, f"ConfigMap {name!r} has no key {key!r}")

    def secret(path: list, name: str, optional: bool) -> None:
        if name not in secrets and not optional:
            t.fail(p.doc, obj, path, f"Secret {name!r} is neither created here nor one of the documented Secrets {sorted(EXTERNAL_SECRETS)}")

    for i, v in enumerate(p.spec.get("volumes") or []):
        vp = p.path + ["spec", "volumes", i]
        if "configMap" in v:
            cm(vp + ["configMap", "name"], v["configMap"].get("name"), bool(v["configMap"].get("optional")))
        if "secret" in v:
            secret(vp + ["secret", "secretName"], v["secret"].get("secretName"), bool(v["secret"].get("optional")))
    for cpath, c in p.containers():
        for i, e in enumerate(c.get("env") or []):
            src = e.get("valueFrom") or {}
            if "configMapKeyRef" in src:
                r = src["configMapKeyRef"]
                cm(cpath + ["env", i, "valueFrom", "configMapKeyRef"], r.get("name"), bool(r.get("optional")), r.get("key"))
            if "secretKeyRef" in src:
                r = src["secretKeyRef"]
                secret(cpath + ["env", i, "valueFrom", "secretKeyRef"], r.get("name"), bool(r.get("optional")))
        for i, e in enumerate(c.get("envFrom") or []):
            if "configMapRef" in e:
                cm(cpath + ["envFrom", i, "configMapRef"], e["configMapRef"].get("name"), bool(e["configMapRef"].get("optional")))
            if "secretRef" in e:
                secret(cpath + ["envFrom", i, "secretRef"], e["secretRef"].get("name"), bool(e["secretRef"].get("optional")))
    sa = p.spec.get("serviceAccountName")
    if sa and sa not in {d.name for d in t.of_kind("ServiceAccount")}:
        t.fail(p.doc, obj, p.path + ["spec", "serviceAccountName"], f"ServiceAccount {sa!r} is not in the rendered output")


def security_policy(t: Target, p: PodTemplate) -> None:
    """The deployment's own rules (deploy/README.md, "Security"): every container non-root,
    read-only root, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp,
    cpu and memory requests and limits; no API token in the pod; a grace period set."""
    obj = p.doc.obj
    pod_sc = p.spec.get("securityContext") or {}
    if p.spec.get("automountServiceAccountToken") is not False:
        t.fail(p.doc, obj, p.path + ["spec", "automountServiceAccountToken"], "must be false (ELF never calls the Kubernetes API)")
    if "terminationGracePeriodSeconds" not in p.spec:
        t.fail(p.doc, obj, p.path + ["spec", "terminationGracePeriodSeconds"], "must be set (SIGTERM handling needs time: a final checkpoint, leaving the quorum)")
    for cpath, c in p.containers():
        sc = c.get("securityContext") or {}

        def need(cond: bool, field: str, what: str) -> None:
            if not cond:
                t.fail(p.doc, obj, cpath + ["securityContext", field], what)

        need(sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, "runAsNonRoot", "must be true (here or in the pod securityContext)")
        need(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem", "must be true")
        need(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation", "must be false")
        need("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), "capabilities", "must drop ALL")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        need(seccomp == "RuntimeDefault", "seccompProfile", f"must be RuntimeDefault (here or in the pod), got {seccomp!r}")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(kind) or {}):
                    t.fail(p.doc, obj, cpath + ["resources", kind], f"{r} {kind[:-1]} missing")


def configmaps_immutable(t: Target) -> None:
    for d in t.of_kind("ConfigMap"):
        if d.obj.get("immutable") is not True:
            t.fail(d, d.obj, ["immutable"], "the run's ConfigMaps must be immutable")


# ---------------------------------------------------------------- JobSet webhook


def jobset_rules(t: Target, d: Doc, sp: list) -> None:
    spec = d.obj
    for k in sp:
        spec = spec.get(k) or {}
    names = [rj.get("name") for rj in spec.get("replicatedJobs") or []]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        t.fail(d, d.obj, sp + ["replicatedJobs"], f"replicated job name {dup!r} is used twice")
    jobset = d.name if d.kind == "JobSet" else "elf"
    for i, rj in enumerate(spec.get("replicatedJobs") or []):
        n = rj.get("name", "")
        # Pods are named <jobset>-<replicated job>-<job index>-<pod index>-<suffix>; their
        # hostname <jobset>-<rj>-<job index>-<pod index> must be a DNS label (JobSet webhook).
        jspec = (rj.get("template") or {}).get("spec") or {}
        pods = jspec.get("completions") or jspec.get("parallelism") or 1
        host = f"{jobset}-{n}-{int(rj.get('replicas', 1)) - 1}-{int(pods) - 1}"
        if not DNS_LABEL.match(n) or len(host) > 63:
            t.fail(d, d.obj, sp + ["replicatedJobs", i, "name"], f"{n!r} makes pod host names like {host!r}, not a DNS label of at most 63 characters")
        for j, dep in enumerate(rj.get("dependsOn") or []):
            if dep.get("name") not in names[:i]:
                t.fail(d, d.obj, sp + ["replicatedJobs", i, "dependsOn", j, "name"], f"{dep.get('name')!r} is not an earlier replicated job")
    for j, target in enumerate((spec.get("successPolicy") or {}).get("targetReplicatedJobs") or []):
        if target not in names:
            t.fail(d, d.obj, sp + ["successPolicy", "targetReplicatedJobs", j], f"no replicated job named {target!r} (has {names})")
    rules = (spec.get("failurePolicy") or {}).get("rules") or []
    rule_names = [r.get("name") for r in rules]
    for i, r in enumerate(rules):
        rp = sp + ["failurePolicy", "rules", i]
        if rule_names.count(r.get("name")) > 1:
            t.fail(d, d.obj, rp + ["name"], f"failure policy rule name {r.get('name')!r} is used twice")
        for j, target in enumerate(r.get("targetReplicatedJobs") or []):
            if target not in names:
                t.fail(d, d.obj, rp + ["targetReplicatedJobs", j], f"no replicated job named {target!r} (has {names})")
        for j, reason in enumerate(r.get("onJobFailureReasons") or []):
            if reason not in JOB_FAILURE_REASONS:
                t.fail(d, d.obj, rp + ["onJobFailureReasons", j], f"{reason!r} is not a Job failure reason ({sorted(JOB_FAILURE_REASONS)})")


# ---------------------------------------------------------------- selectors and named ports


def selectors(t: Target, pods: list[PodTemplate]) -> None:
    def matching(d: Doc, selector: dict | None) -> list[PodTemplate]:
        return [p for p in pods if same_namespace(p.namespace, d.namespace) and selector_matches(selector, p.labels)]

    for d in t.of_kind("Service"):
        spec = d.obj.get("spec") or {}
        sel = spec.get("selector")
        if not sel:
            continue
        hits = matching(d, {"matchLabels": sel})
        if not hits:
            t.fail(d, d.obj, ["spec", "selector"], f"selects no pod of this deployment ({sel})")
        for i, port in enumerate(spec.get("ports") or []):
            tp = port.get("targetPort")
            for p in hits:
                if isinstance(tp, str) and tp not in p.port_names():
                    t.fail(d, d.obj, ["spec", "ports", i, "targetPort"], f"port name {tp!r} does not exist on {p.describe()} (has {sorted(p.port_names())})")
    for d in t.of_kind("PodMonitor"):
        spec = d.obj.get("spec") or {}
        hits = matching(d, spec.get("selector"))
        if not hits:
            t.fail(d, d.obj, ["spec", "selector"], "selects no pod of this deployment")
        for i, ep in enumerate(spec.get("podMetricsEndpoints") or []):
            port = ep.get("port")
            for p in hits:
                if isinstance(port, str) and port not in p.port_names():
                    t.fail(d, d.obj, ["spec", "podMetricsEndpoints", i, "port"], f"port name {port!r} does not exist on {p.describe()} (has {sorted(p.port_names())})")
    for d in t.of_kind("PodDisruptionBudget"):
        if not matching(d, (d.obj.get("spec") or {}).get("selector")):
            t.fail(d, d.obj, ["spec", "selector"], "selects no pod of this deployment")
    for d in t.of_kind("NetworkPolicy"):
        spec = d.obj.get("spec") or {}
        selected = matching(d, spec.get("podSelector"))
        if not selected:
            t.fail(d, d.obj, ["spec", "podSelector"], "selects no pod of this deployment")
        for direction, peers_key in (("ingress", "from"), ("egress", "to")):
            for i, rule in enumerate(spec.get(direction) or []):
                if direction == "ingress":
                    dest = selected
                else:
                    peers = rule.get(peers_key) or []
                    if not peers or any("podSelector" not in peer or "namespaceSelector" in peer for peer in peers):
                        dest = None  # destinations outside this deployment: names cannot be checked
                    else:
                        dest = [p for peer in peers for p in matching(d, peer["podSelector"])]
                        if not dest:
                            t.fail(d, d.obj, ["spec", direction, i, peers_key], "podSelector peers select no pod of this deployment")
                if not dest:
                    continue
                names = set().union(*(p.port_names() for p in dest))
                for j, port in enumerate(rule.get("ports") or []):
                    if isinstance(port.get("port"), str) and port["port"] not in names:
                        t.fail(d, d.obj, ["spec", direction, i, "ports", j, "port"], f"port name {port['port']!r} exists on none of the destination pods (they have {sorted(names)})")
    for p in pods:
        for i, c in enumerate(p.spec.get("topologySpreadConstraints") or []):
            if not selector_matches(c.get("labelSelector"), p.labels):
                t.fail(p.doc, p.doc.obj, p.path + ["spec", "topologySpreadConstraints", i, "labelSelector"], "does not select the pod it belongs to")


# ---------------------------------------------------------------- the run's wiring


def _elf(p: PodTemplate, t: Target) -> tuple[list, dict, dict] | None:
    """The `elf` container of a pod: (path, container, resolved flags), if any."""
    for cpath, c in p.containers():
        if (c.get("command") or [""])[0].endswith("elf") or (c.get("image") or "").split("/")[-1].startswith("elf"):
            env = env_values(c, p.namespace, t.configmaps())
            args = [expand(str(a), env) for a in c.get("args") or []]
            return cpath, c, {"_cmd": args[0] if args else "", **flags(args[1:])}
    return None


def run_wiring(t: Target, pods: list[PodTemplate]) -> None:
    """Workers reach the coordinator's Service on its gRPC port; the coordinator waits for no
    more workers than the workers job runs after losing maxFailedIndexes slots; each security
    mode has the files it needs."""
    services = {d.name: d for d in t.of_kind("Service")}
    coordinators = [p for p in pods if (e := _elf(p, t)) and e[2]["_cmd"] == "coordinator"]
    for p in pods:
        e = _elf(p, t)
        if not e:
            continue
        cpath, c, f = e
        obj = p.doc.obj
        args_path = cpath + ["args"]
        mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts") or []}
        vols = {v.get("name"): v for v in p.spec.get("volumes") or []}
        mode = f.get("security", "")
        if mode in ("token", "mtls") and "tls-dir" not in f:
            t.fail(p.doc, obj, args_path, f"--security={mode} needs --tls-dir")
        if "tls-dir" in f:
            vol = vols.get(mounts.get(f["tls-dir"]))
            if vol is None or "secret" not in vol:
                t.fail(p.doc, obj, args_path, f"--tls-dir={f['tls-dir']} is not a mounted Secret")
            else:
                items = {i.get("path") for i in vol["secret"].get("items") or []} or {"tls.crt", "tls.key", "ca.crt"}
                need = {"tls.crt", "tls.key", "ca.crt"} if (mode == "mtls" or f["_cmd"] == "coordinator") else {"ca.crt"}
                if not need <= items:
                    t.fail(p.doc, obj, args_path, f"--tls-dir={f['tls-dir']} (Secret {vol['secret'].get('secretName')!r}) lacks {sorted(need - items)} for --security={mode}")
        if mode == "token":
            tf = f.get("token-file")
            if not tf:
                t.fail(p.doc, obj, args_path, "--security=token needs --token-file")
            elif tf.rsplit("/", 1)[0] not in mounts:
                t.fail(p.doc, obj, args_path, f"--token-file={tf}: its folder is not a mounted volume")
        if f["_cmd"] == "worker":
            url = f.get("coordinator", "")
            u = urlsplit(url)
            svc = services.get((u.hostname or "").split(".")[0])
            if svc is None:
                t.fail(p.doc, obj, args_path, f"--coordinator={url}: {u.hostname!r} is not a Service of this deployment ({sorted(services)})")
            else:
                ports = {sp.get("port"): sp for sp in (svc.obj.get("spec") or {}).get("ports") or []}
                sp = ports.get(u.port)
                host_ns = (u.hostname or "").split(".")[1:2]
                if host_ns and not VAR_REF.search(host_ns[0]) and svc.namespace and host_ns[0] != svc.namespace:
                    t.fail(p.doc, obj, args_path, f"--coordinator={url}: the Service is in namespace {svc.namespace!r}")
                if sp is None:
                    t.fail(p.doc, obj, args_path, f"--coordinator={url}: Service {svc.name!r} has no port {u.port}")
                elif not any(sp.get("targetPort") in q.port_names() and _is_grpc(q, sp.get("targetPort"), t) for q in coordinators):
                    t.fail(p.doc, obj, args_path, f"--coordinator={url}: port {u.port} of Service {svc.name!r} does not lead to the coordinator's --listen port")
            if mode != "insecure" and u.scheme != "https":
                t.fail(p.doc, obj, args_path, f"--coordinator={url}: --security={mode} needs https://")
    for q in coordinators:
        _, _, f = _elf(q, t)
        n = f.get("workers", "")
        workers = [p for p in pods if p.jobset == q.jobset and p.doc is q.doc and (e := _elf(p, t)) and e[2]["_cmd"] == "worker" and e[2].get("role", "train") == "train"]
        if not n.isdigit():
            t.fail(q.doc, q.doc.obj, q.path, f"--workers resolves to {n!r}, not a number")
            continue
        for w in workers:
            spec = (w.job or {}).get("spec") or {}
            slots = _slots(t, w, spec)
            lost = spec.get("maxFailedIndexes", 0)
            if isinstance(slots, int) and slots - lost < int(n):
                t.fail(w.doc, w.doc.obj, w.job_path + ["spec", "completions"],
                       f"{slots} worker slots minus maxFailedIndexes {lost} is fewer than the {n} workers the coordinator waits for (--workers)")
            if isinstance(spec.get("parallelism"), int) and isinstance(spec.get("completions"), int) and spec["parallelism"] != spec["completions"]:
                t.fail(w.doc, w.doc.obj, w.job_path + ["spec", "parallelism"], "parallelism must equal completions (every worker slot runs at once)")


def _slots(t: Target, w: PodTemplate, spec: dict) -> int | None:
    """Worker slots: the Job's completions, or a TrainJob's numNodes for a Trainer runtime."""
    if w.doc.kind in ("ClusterTrainingRuntime", "TrainingRuntime"):
        for tj in t.of_kind("TrainJob"):
            if tj.name == w.jobset:
                n = ((tj.obj.get("spec") or {}).get("trainer") or {}).get("numNodes")
                if n is not None:
                    return n
        return ((w.doc.obj.get("spec") or {}).get("mlPolicy") or {}).get("numNodes", spec.get("completions"))
    return spec.get("completions")


def _is_grpc(q: PodTemplate, port_name: str, t: Target) -> bool:
    e = _elf(q, t)
    listen = e[2].get("listen", "") if e else ""
    for _, c in q.containers():
        for p in c.get("ports") or []:
            if p.get("name") == port_name and listen.endswith(f":{p.get('containerPort')}"):
                return True
    return False


def certificates(t: Target, pods: list[PodTemplate]) -> None:
    """cert-manager: Issuers exist; the coordinator's certificate names the host workers dial;
    each worker's client certificate carries its role as OU."""
    issuers = {d.name for d in t.of_kind("Issuer")}
    certs = {(d.obj.get("spec") or {}).get("secretName"): d for d in t.of_kind("Certificate")}
    for d in t.of_kind("Certificate"):
        ref = (d.obj.get("spec") or {}).get("issuerRef") or {}
        if ref.get("kind", "Issuer") == "Issuer" and ref.get("name") not in issuers:
            t.fail(d, d.obj, ["spec", "issuerRef", "name"], f"Issuer {ref.get('name')!r} is not in the rendered output")
    for d in t.of_kind("Issuer"):
        ca = (d.obj.get("spec") or {}).get("ca")
        if ca and ca.get("secretName") not in certs:
            t.fail(d, d.obj, ["spec", "ca", "secretName"], f"no Certificate makes the CA Secret {ca.get('secretName')!r}")
    if not certs:
        return
    server_names: list[str] = []
    for p in pods:
        e = _elf(p, t)
        if not e:
            continue
        cpath, c, f = e
        mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts") or []}
        vol = {v.get("name"): v for v in p.spec.get("volumes") or []}.get(mounts.get(f.get("tls-dir")))
        cert = certs.get(((vol or {}).get("secret") or {}).get("secretName"))
        if cert is None or f.get("security") != "mtls":
            continue
        cspec = cert.obj.get("spec") or {}
        if f["_cmd"] == "coordinator":
            server_names += cspec.get("dnsNames") or []
            if "server auth" not in (cspec.get("usages") or ["server auth"]):
                t.fail(cert, cert.obj, ["spec", "usages"], "the coordinator's certificate needs usage 'server auth'")
        else:
            role = f.get("role", "train")
            ous = (cspec.get("subject") or {}).get("organizationalUnits") or []
            if ous != [role]:
                t.fail(cert, cert.obj, ["spec", "subject", "organizationalUnits"], f"mounted by a --role={role} worker ({p.describe()}), so the OU must be [{role!r}], got {ous}")
            if "client auth" not in (cspec.get("usages") or []):
                t.fail(cert, cert.obj, ["spec", "usages"], "a worker's certificate needs usage 'client auth'")
    for p in pods:
        e = _elf(p, t)
        if e and e[2]["_cmd"] == "worker" and e[2].get("security") == "mtls" and server_names:
            host = urlsplit(e[2].get("coordinator", "")).hostname or ""
            host = host.replace("$(POD_NAMESPACE)", p.namespace or "")
            if host not in server_names:
                t.fail(p.doc, p.doc.obj, e[0] + ["args"], f"--coordinator host {host!r} is not among the coordinator certificate's dnsNames {server_names}")


def kueue(t: Target) -> None:
    queues = {d.name for d in t.of_kind("LocalQueue")}
    for d in t.of_kind("JobSet"):
        q = ((d.obj.get("metadata") or {}).get("labels") or {}).get("kueue.x-k8s.io/queue-name")
        if q is None:
            continue
        if (d.obj.get("spec") or {}).get("suspend") is not True:
            t.fail(d, d.obj, ["spec", "suspend"], "a JobSet queued in Kueue must be created with suspend: true")
        if queues and q not in queues:
            t.fail(d, d.obj, ["metadata", "labels", "kueue.x-k8s.io/queue-name"], f"names LocalQueue {q!r}, not in the rendered output ({sorted(queues)})")


__all__ = ["check", "EXTERNAL_SECRETS", "REPLICATED_JOB"]
