"""The rendered objects of one kustomize target and the views the checks share: failures with
readable field paths, pod templates with the labels their pods will carry, label selectors,
and a container's resolved command-line flags."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB = "jobset.sigs.k8s.io/replicatedjob-name"


@dataclass(frozen=True)
class Failure:
    """One violated rule: which target, object and field, and what is wrong."""

    target: str
    obj: str
    field: str
    message: str

    def line(self) -> str:
        """Returns the one-line report."""
        where = f" {self.field}" if self.field else ""
        return f"FAIL {self.target}: {self.obj}{where}: {self.message}"


@dataclass
class Doc:
    """One rendered object."""

    obj: dict

    @property
    def kind(self) -> str:
        return self.obj.get("kind", "?")

    @property
    def api_version(self) -> str:
        return self.obj.get("apiVersion", "?")

    @property
    def name(self) -> str:
        return (self.obj.get("metadata") or {}).get("name", "?")

    @property
    def namespace(self) -> str | None:
        return (self.obj.get("metadata") or {}).get("namespace")

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


def fmt_path(root: Any, path: list) -> str:
    """Formats a path into `root` as `spec.replicatedJobs[workers].template...`: list items
    that have a `name` are shown by name, others by index."""
    out = ""
    node = root
    for p in path:
        if isinstance(p, int):
            item = node[p] if isinstance(node, list) and 0 <= p < len(node) else None
            label = item.get("name") if isinstance(item, dict) and isinstance(item.get("name"), str) else None
            out += f"[{label}]" if label else f"[{p}]"
            node = item
        else:
            out += ("." if out else "") + str(p)
            node = node.get(p) if isinstance(node, dict) else None
    return out


@dataclass
class PodTemplate:
    """A pod template inside a rendered object, with what its pods will look like."""

    doc: Doc
    path: list  # from the object's root to the pod template (metadata + spec)
    labels: dict  # the labels its pods carry (template labels + controller labels)
    namespace: str | None
    job_path: list | None = None  # the batch/v1 Job template around it, if any
    replicated_job: str | None = None
    jobset: str | None = None

    @property
    def template(self) -> dict:
        return get(self.doc.obj, self.path)

    @property
    def spec(self) -> dict:
        return self.template.get("spec") or {}

    @property
    def job(self) -> dict | None:
        return get(self.doc.obj, self.job_path) if self.job_path is not None else None

    def containers(self) -> Iterator[tuple[list, dict]]:
        """Yields (path from the object root, container) for containers and init containers."""
        for key in ("initContainers", "containers"):
            for i, c in enumerate(self.spec.get(key) or []):
                yield self.path + ["spec", key, i], c

    def port_names(self) -> set[str]:
        return {p["name"] for _, c in self.containers() for p in c.get("ports") or [] if "name" in p}

    def describe(self) -> str:
        return f"{self.doc.ref} {fmt_path(self.doc.obj, self.path)}"


def get(obj: Any, path: list) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def replicated_job_templates(doc: Doc, spec_path: list, jobset_names: list[str], namespace: str | None) -> list[PodTemplate]:
    """The pod templates of a JobSet spec at `spec_path` (a JobSet, or a Trainer runtime's
    JobSet template), labelled as the JobSet controller labels its pods."""
    out = []
    spec = get(doc.obj, spec_path) or {}
    for i, rj in enumerate(spec.get("replicatedJobs") or []):
        job_path = spec_path + ["replicatedJobs", i, "template"]
        pod_path = job_path + ["spec", "template"]
        try:
            tmpl = get(doc.obj, pod_path)
        except (KeyError, IndexError, TypeError):
            continue
        for js in jobset_names:
            labels = dict((tmpl.get("metadata") or {}).get("labels") or {})
            labels[JOBSET_NAME] = js
            labels[REPLICATED_JOB] = rj.get("name", "")
            out.append(PodTemplate(doc, pod_path, labels, namespace, job_path, rj.get("name"), js))
    return out


def pod_templates(docs: list[Doc]) -> list[PodTemplate]:
    """Every pod template in the rendered objects: JobSets, Trainer runtimes (as each
    TrainJob on them would run them) and plain Jobs."""
    out: list[PodTemplate] = []
    trainjobs = [d for d in docs if d.kind == "TrainJob"]
    for d in docs:
        if d.kind == "JobSet":
            out += replicated_job_templates(d, ["spec"], [d.name], d.namespace)
        elif d.kind in ("ClusterTrainingRuntime", "TrainingRuntime"):
            users = [t for t in trainjobs if ((t.obj.get("spec") or {}).get("runtimeRef") or {}).get("name") == d.name]
            for t in users or [None]:
                out += replicated_job_templates(d, ["spec", "template", "spec"], [t.name if t else "<trainjob>"], t.namespace if t else d.namespace)
        elif d.kind == "Job":
            labels = dict((((d.obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {})
            out.append(PodTemplate(d, ["spec", "template"], labels, d.namespace, [], None, None))
    return out


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """Evaluates a metav1.LabelSelector; an empty selector matches everything."""
    selector = selector or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        k, op, vals = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and k in labels and labels[k] in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def same_namespace(a: str | None, b: str | None) -> bool:
    return (a or "") == (b or "")


VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def env_values(container: dict, pod_namespace: str | None, configmaps: dict[str, dict]) -> dict[str, str | None]:
    """Returns the container's declared env vars, with values where the manifests decide them
    (literal values, ConfigMap keys, metadata.namespace); None where only the cluster knows."""
    out: dict[str, str | None] = {}
    for e in container.get("env") or []:
        name = e.get("name")
        if "value" in e:
            out[name] = expand(str(e["value"]), out)
            continue
        src = e.get("valueFrom") or {}
        if "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            out[name] = ((configmaps.get(ref.get("name")) or {}).get("data") or {}).get(ref.get("key"))
        elif (src.get("fieldRef") or {}).get("fieldPath") == "metadata.namespace":
            out[name] = pod_namespace
        else:
            out[name] = None
    return out


def expand(s: str, env: dict[str, str | None]) -> str:
    """Expands $(VAR) as the kubelet does, leaving unknown or cluster-decided ones as written."""
    return VAR_REF.sub(lambda m: env[m.group(1)] if env.get(m.group(1)) is not None else m.group(0), s)


def flags(args: list[str]) -> dict[str, str]:
    """Parses `--flag=value` and `--flag value` pairs; a bare `--flag` maps to ""."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            if "=" in a:
                k, v = a[2:].split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                k, v = a[2:], args[i + 1]
                i += 1
            else:
                k, v = a[2:], ""
            out[k] = v
        i += 1
    return out


@dataclass
class Target:
    """One rendered kustomize target."""

    name: str
    docs: list[Doc]
    failures: list[Failure] = field(default_factory=list)

    def fail(self, doc: Doc | str, path_root: Any, path: list | str, message: str) -> None:
        ref = doc.ref if isinstance(doc, Doc) else doc
        where = path if isinstance(path, str) else fmt_path(path_root, path)
        self.failures.append(Failure(self.name, ref, where, message))

    def of_kind(self, *kinds: str) -> list[Doc]:
        return [d for d in self.docs if d.kind in kinds]

    def configmaps(self) -> dict[str, dict]:
        return {d.name: d.obj for d in self.of_kind("ConfigMap")}
