"""Regenerate the vendored schemas the manifest test validates against (no cluster, no network).

Two sources, both pinned, both read from local copies (fetch them first):

* Kubernetes core kinds: the strict JSON schemas of Kubernetes v1.34 that the
  ``kubernetes-validate`` wheel bundles (``pip download kubernetes-validate==1.37.0
  --no-deps``; Apache-2.0). Only the kinds the manifests use, with every
  definition they reach, are kept.
* KubeRay: the ``RayService`` CRD (``ray.io/v1``) of the KubeRay release the
  manifests are written for, from a clone of ray-project/kuberay at its tag
  (``ray-operator/config/crd/bases/ray.io_rayservices.yaml``; Apache-2.0).

Descriptions are dropped (they are ~70 % of the bytes and validate nothing).
The CRD schema is made strict the way ``kubectl apply`` (server-side field
validation ``Strict``, the default since Kubernetes 1.27) treats a custom
resource: an unknown field is an error, except under
``x-kubernetes-preserve-unknown-fields``. CEL rules (``x-kubernetes-validations``)
are kept as data but not evaluated by the test; the operator's webhook-less
checks run only in a cluster.

    python cluster/kubernetes/schemas/vendor.py --wheel kubernetes_validate-1.37.0-py3-none-any.whl \
        --kuberay /path/to/kuberay.git
"""

from __future__ import annotations

import argparse
import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
K8S_VERSION = "v1.34.0"
KUBERAY_TAG = "v1.7.0"
CRD_PATH = "ray-operator/config/crd/bases/ray.io_rayservices.yaml"

# (apiVersion, kind) of every core object the manifests may hold, and the
# schema file of the kubernetes-validate wheel that describes it.
KINDS = {
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("v1", "Namespace"): "namespace-v1.json",
    ("v1", "ServiceAccount"): "serviceaccount-v1.json",
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("apps/v1", "StatefulSet"): "statefulset-apps-v1.json",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudget-policy-v1.json",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscaler-autoscaling-v2.json",
    ("networking.k8s.io/v1", "Ingress"): "ingress-networking-v1.json",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicy-networking-v1.json",
}
REF_PREFIX = "/api/_definitions.json#/$defs/"
LOCAL_PREFIX = "#/$defs/"


def strip(node: Any) -> Any:
    """``node`` without ``description`` keys, at any depth."""
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs(node: Any) -> set[str]:
    """Names of the definitions ``node`` refers to."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            for prefix in (REF_PREFIX, LOCAL_PREFIX):  # the wheel's kind files, its definitions
                if ref.startswith(prefix):
                    found.add(ref[len(prefix) :])
        for v in node.values():
            found |= refs(v)
    elif isinstance(node, list):
        for v in node:
            found |= refs(v)
    return found


def local_refs(node: Any) -> Any:
    """``node`` with its references pointing into the same document's ``$defs``."""
    if isinstance(node, dict):
        out = {k: local_refs(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            out["$ref"] = LOCAL_PREFIX + ref[len(REF_PREFIX) :]
        return out
    if isinstance(node, list):
        return [local_refs(v) for v in node]
    return node


def core_schemas(wheel: Path) -> dict[str, Any]:
    """One document: ``$defs`` (the reached definitions) and ``kinds`` (apiVersion/kind -> $ref)."""
    base = f"kubernetes_validate/kubernetes-json-schema/{K8S_VERSION}-local-strict/"
    with zipfile.ZipFile(wheel) as z:
        defs = json.loads(z.read(base + "_definitions.json"))["$defs"]
        tops = {key: json.loads(z.read(base + name)) for key, name in KINDS.items()}
    wanted: set[str] = set()
    todo = set().union(*(refs(t) for t in tops.values()))
    todo.add("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")  # custom resources' metadata
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo |= refs(defs[name]) - wanted
    out_defs = {name: local_refs(strip(defs[name])) for name in sorted(wanted)}
    kinds = {}
    for (api, kind), top in sorted(tops.items()):
        name = f"kind:{api.replace('/', '.')}.{kind}"  # a JSON pointer may not hold a "/"
        body = local_refs(strip(top))
        for k in ("$schema", "$id"):
            body.pop(k, None)
        out_defs[name] = body
        kinds[f"{api}/{kind}"] = {"$ref": f"#/$defs/{name}"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "source": f"kubernetes-validate 1.37.0, {K8S_VERSION}-local-strict (descriptions removed)",
        "kinds": kinds,
        "$defs": out_defs,
    }


def strict(node: Any) -> Any:
    """An OpenAPI structural schema that refuses unknown fields, as kubectl's strict validation."""
    if isinstance(node, list):
        return [strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) if k not in ("enum", "default", "example") else v for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def rayservice_schema(kuberay: Path) -> dict[str, Any]:
    """The RayService v1 schema of KubeRay ``KUBERAY_TAG``, strict, without descriptions."""
    text = subprocess.run(
        ["git", "-C", str(kuberay), "show", f"{KUBERAY_TAG}:{CRD_PATH}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    commit = subprocess.run(
        ["git", "-C", str(kuberay), "rev-list", "-n", "1", KUBERAY_TAG],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    crd = yaml.safe_load(text)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return {
        "source": f"ray-project/kuberay {KUBERAY_TAG} ({commit}) {CRD_PATH}, version v1 "
        "(descriptions removed; unknown fields refused)",
        "group": crd["spec"]["group"],
        "kind": crd["spec"]["names"]["kind"],
        "version": "v1",
        "schema": strict(strip(v1["schema"]["openAPIV3Schema"])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, required=True, help="kubernetes_validate-1.37.0 wheel")
    ap.add_argument(
        "--kuberay", type=Path, required=True, help="a git clone of ray-project/kuberay"
    )
    args = ap.parse_args()
    core = core_schemas(args.wheel)
    (HERE / f"kubernetes-{K8S_VERSION}-strict.json").write_text(
        json.dumps(core, separators=(",", ":"), sort_keys=True) + "\n"
    )
    ray = rayservice_schema(args.kuberay)
    (HERE / f"kuberay-{KUBERAY_TAG}-rayservice.json").write_text(
        json.dumps(ray, separators=(",", ":"), sort_keys=True) + "\n"
    )


if __name__ == "__main__":
    main()
