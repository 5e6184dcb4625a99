"""Renders chart/ for three value sets (default; 3 members with S3, credentials, PDB,
ServiceMonitor and PrometheusRule; TLS for etcd clients, peers and the sidecar) with
scripts/chart-render (Go text/template and Helm's functions; no helm binary here) and validates
every manifest against the Kubernetes 1.30 schemas (kubernetes-validate, strict: unknown fields
fail). Also checks that every flag the chart passes to etcdbrctl exists, that the etcd
configuration it ships is YAML with the keys /config rewrites, and the resources expected for
each value set. usage: test-chart.py RENDERER ETCDBRCTL"""

import copy
import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

CHART = Path(__file__).resolve().parent.parent / "chart"
K8S = "1.30.0"

SETS = {
    "default": {},
    "multi-member": {
        "replicas": 3,
        "backup": {
            "storageProvider": "S3",
            "storageContainer": "etcd-backups",
            "credentialsSecret": "etcd-backup-s3",
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True},
        "affinity": {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "etcd"}},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            }
        },
    },
    "tls": {
        "replicas": 3,
        "etcd": {
            "tls": {
                "client": {"enabled": True, "secretName": "etcd-client-tls"},
                "peer": {"enabled": True, "secretName": "etcd-peer-tls"},
            }
        },
        "backup": {"tls": {"enabled": True, "secretName": "etcd-backup-tls"}},
        "serviceMonitor": {"enabled": True},
    },
}

EXPECTED = {
    "default": {"ConfigMap", "Service", "StatefulSet"},
    "multi-member": {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"},
    "tls": {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor"},
}


def merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def render(renderer, values):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    ctx = {
        "Values": values,
        "Release": {"Name": "etcd-main", "Namespace": "shoot--prod", "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
    }
    out = subprocess.run([renderer, str(CHART)], input=json.dumps(ctx), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"render failed: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def check_crd(doc):
    # no schema for Prometheus operator CRDs in kubernetes-validate: the structure we rely on
    assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert spec["selector"]["matchLabels"] and spec["endpoints"], spec
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "path", "interval", "scheme", "tlsConfig"}, ep
    else:
        for g in spec["groups"]:
            for r in g["rules"]:
                assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
                assert r["alert"] and r["expr"], r


def main():
    renderer, etcdbrctl = sys.argv[1], sys.argv[2]
    help_text = subprocess.run([etcdbrctl, "server", "--help"], capture_output=True, text=True, check=True).stdout
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for name, over in SETS.items():
        docs = render(renderer, merge(defaults, over))
        kinds = set()
        for doc in docs:
            kinds.add(doc["kind"])
            if doc["apiVersion"].startswith("monitoring.coreos.com"):
                check_crd(doc)
            else:
                try:
                    kubernetes_validate.validate(doc, K8S, strict=True)
                except kubernetes_validate.ValidationError as e:
                    raise SystemExit(f"{name}: {doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.path)}")
        assert kinds == EXPECTED[name], (name, kinds)
        sts = next(d for d in docs if d["kind"] == "StatefulSet")
        assert sts["spec"]["replicas"] == merge(defaults, over)["replicas"]
        backup = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "backup")
        for arg in backup["args"][1:]:
            flag = arg.split("=", 1)[0]
            assert f"{flag} " in help_text or f"{flag}\n" in help_text or f"{flag}=" in help_text, f"{name}: etcdbrctl server has no {flag}"
        conf = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["etcd.conf.yaml"])
        members = conf["initial-cluster"].split(",")
        assert len(members) == sts["spec"]["replicas"], members
        assert set(conf["advertise-client-urls"]) == {m.split("=")[0] for m in members}
        if over.get("etcd", {}).get("tls"):
            assert conf["client-transport-security"]["client-cert-auth"] is True
            assert all(u.startswith("https://") for m in members for u in [m.split("=", 1)[1]])
        print(f"chart {name}: {len(docs)} manifests valid for Kubernetes {K8S} ({', '.join(sorted(kinds))})")


if __name__ == "__main__":
    main()
