"""Renders every kustomize target under deploy/k8s and runs every check on it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import builtin, cel, crd, rules
from .model import Doc, Failure, Target, fmt_path

# Kustomizations that are parts of others, not deployable alone.
PARTS = {"common"}
# The Kubernetes versions checked by default: the oldest the manifests support (Job
# podFailurePolicy GA, backoffLimitPerIndex and podReplacementPolicy on by default) and the
# newest kubernetes-validate has schemas for.
OLDEST = "1.31"


def default_versions() -> list[str]:
    return [OLDEST, builtin.supported_versions()[-1]]


@dataclass
class Context:
    """What every target's checks share: kubectl, the schemas, the CEL evaluator."""

    kubectl: Path
    schemas_dir: Path
    versions: list[str]
    crds: dict = field(init=False)
    cel: cel.Evaluator = field(init=False)

    def __post_init__(self) -> None:
        self.crds = crd.load(self.schemas_dir)
        self.cel = cel.Evaluator(self.crds)

    @property
    def crd_scopes(self) -> dict[str, str]:
        return {s.kind: s.scope for s in self.crds.values()}


def discover(k8s_dir: Path) -> list[str]:
    """Returns every folder under `k8s_dir` holding a kustomization, except the PARTS."""
    out = []
    for k in sorted(k8s_dir.rglob("kustomization.yaml")):
        rel = k.parent.relative_to(k8s_dir).as_posix()
        if rel not in PARTS:
            out.append(rel)
    return out


def render(ctx: Context, k8s_dir: Path, name: str) -> Target:
    t = Target(name, [])
    proc = subprocess.run([str(ctx.kubectl), "kustomize", str(k8s_dir / name)], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = " ".join(proc.stderr.split()) or f"exit {proc.returncode}"
        t.fail("<kustomization>", None, "", f"kubectl kustomize failed: {msg}")
        return t
    t.docs = [Doc(o) for o in yaml.load_all(proc.stdout, Loader=crd.LOADER) if o]
    return t


def validate(ctx: Context, t: Target) -> None:
    """Schemas: built-in kinds at every version, custom resources strictly with CEL, and the
    Job templates inside JobSets and Trainer runtimes as the cluster's own batch/v1 Job."""
    for d in t.docs:
        s = ctx.crds.get((d.api_version, d.kind))
        if s is not None:
            obj = crd.with_defaults(d.obj, s.raw)
            for path, msg in crd.errors(s, obj):
                t.fail(d, d.obj, path, f"[{s.source}] {msg}")
            for path, msg in builtin.object_meta_errors(d.obj.get("metadata") or {}, ctx.versions[-1]):
                t.fail(d, d.obj, ["metadata"] + path, f"[ObjectMeta, k8s {ctx.versions[-1]}] {msg}")
            for path, msg in ctx.cel.violations(s, obj):
                t.fail(d, d.obj, path, f"[CEL, {s.source}] {msg}")
            for spec_path in job_template_specs(d):
                job_templates(ctx, t, d, spec_path)
            continue
        for v in ctx.versions:
            try:
                errs = builtin.errors(d.obj, v)
            except builtin.NoSchema as e:
                t.fail(d, d.obj, "", f"[k8s {v}] {e}")
                continue
            for path, msg in errs:
                t.fail(d, d.obj, path, f"[k8s {v} {d.api_version} {d.kind}] {msg}")


def job_template_specs(d: Doc) -> list[list]:
    if d.kind == "JobSet":
        return [["spec"]]
    if d.kind in ("ClusterTrainingRuntime", "TrainingRuntime"):
        return [["spec", "template", "spec"]]
    return []


def job_templates(ctx: Context, t: Target, d: Doc, spec_path: list) -> None:
    spec = d.obj
    for k in spec_path:
        spec = (spec or {}).get(k) or {}
    for i, rj in enumerate(spec.get("replicatedJobs") or []):
        tmpl = rj.get("template") or {}
        meta = dict(tmpl.get("metadata") or {})
        meta.setdefault("name", f"{d.name}-{rj.get('name', i)}-0")
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": tmpl.get("spec") or {}}
        base = spec_path + ["replicatedJobs", i, "template"]
        for v in ctx.versions:
            for path, msg in builtin.errors(job, v):
                if path[:2] == ["metadata", "name"] and "name" not in (tmpl.get("metadata") or {}):
                    continue
                # The Job's spec and metadata are the template's.
                where = fmt_path(d.obj, base + path)
                t.fail(d, None, where, f"[k8s {v} batch/v1 Job, the Job this template makes] {msg}")


def check_target(ctx: Context, k8s_dir: Path, name: str) -> Target:
    t = render(ctx, k8s_dir, name)
    if t.docs:
        validate(ctx, t)
        rules.check(t, ctx.crd_scopes)
    return t


def run(ctx: Context, k8s_dir: Path, names: list[str] | None = None) -> list[Target]:
    return [check_target(ctx, k8s_dir, n) for n in (names or discover(k8s_dir))]


def failures(targets: list[Target]) -> list[Failure]:
    return [f for t in targets for f in t.failures]
