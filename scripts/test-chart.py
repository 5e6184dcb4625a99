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
            "verifySchedule": "0 3 * * 0",
            "encryption": {
                "recipientsSecret": "etcd-backup-age-recipients",
                "identitySecret": "etcd-backup-age-identity",
            },
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
        "backup": {
            "tls": {"enabled": True, "secretName": "etcd-backup-tls"},
            "auth": {"clientCertificates": True},
            "storageProvider": "GCS",
            "storageContainer": "etcd-backups",
        },
        "serviceMonitor": {"enabled": True},
        "networkPolicy": {
            "enabled": True,
            "monitoringFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
        },
    },
}

EXPECTED = {
    "default": {"ConfigMap", "Secret", "Service", "StatefulSet"},
    "multi-member": {"ConfigMap", "Secret", "Service", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"},
    "tls": {"ConfigMap", "Secret", "Service", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy"},
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


def check_api_access(name, docs, spec, backup):
    """The sidecar's API: a token Secret mounted in both containers, passed to the sidecar
    (--server-token-file) and to the bootstrap script (TOKEN_FILE); its port on the headless
    peer Service only, not on the client Service that every pod can reach."""
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert len(secret["data"]["token"]) >= 48, secret
    volume = next(v for v in spec["volumes"] if v["name"] == "api-token")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"], volume
    etcd = next(c for c in spec["containers"] if c["name"] == "etcd")
    for c in (etcd, backup):
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts.get("api-token") == "/var/etcd/api-token", (name, c["name"], mounts)
    assert "--server-token-file=/var/etcd/api-token/token" in backup["args"], backup["args"]
    assert {"name": "TOKEN_FILE", "value": "/var/etcd/api-token/token"} in etcd["env"], etcd["env"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    client = next(s for n, s in services.items() if n.endswith("-client"))
    peer = next(s for n, s in services.items() if n.endswith("-peer"))
    assert "backup" not in {p["name"] for p in client["spec"]["ports"]}, client
    assert peer["spec"]["clusterIP"] == "None" and "backup" in {p["name"] for p in peer["spec"]["ports"]}, peer
    policy = next((d for d in docs if d["kind"] == "NetworkPolicy"), None)
    if policy:
        rules = policy["spec"]["ingress"]
        backup_from = [r.get("from") for r in rules if {"port": "backup"} in r["ports"]]
        # never open to every source
        assert backup_from and all(backup_from), rules


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
        # OrderedReady would never create the second pod of a new cluster: the first is not
        # ready (no quorum) alone
        assert sts["spec"]["podManagementPolicy"] == "Parallel", sts["spec"]
        backup = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "backup")
        for arg in backup["args"][1:]:
            flag = arg.split("=", 1)[0]
            assert f"{flag} " in help_text or f"{flag}\n" in help_text or f"{flag}=" in help_text, f"{name}: etcdbrctl server has no {flag}"
        spec = sts["spec"]["template"]["spec"]
        store_arg = next(a for a in backup["args"] if a.startswith("--store-container="))
        if merge(defaults, over)["backup"]["storageProvider"] == "Local":
            # backups on a volume of their own, not on the data volume
            container = store_arg.split("=", 1)[1]
            mounts = {m["mountPath"]: m["name"] for m in backup["volumeMounts"]}
            owner = max((p for p in mounts if container == p or container.startswith(p + "/")), key=len)
            assert mounts[owner] == "backups", (name, container, mounts)
            assert {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]} == {"data", "backups"}
        etcd_env = {e["name"] for e in next(c for c in spec["containers"] if c["name"] == "etcd")["env"]}
        assert {"BACKUP_URL", "MARKER", "DATA_DIR"} <= etcd_env, etcd_env
        conf = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["etcd.conf.yaml"])
        members = conf["initial-cluster"].split(",")
        assert len(members) == sts["spec"]["replicas"], members
        assert set(conf["advertise-client-urls"]) == {m.split("=")[0] for m in members}
        if over.get("etcd", {}).get("tls"):
            assert conf["client-transport-security"]["client-cert-auth"] is True
            assert all(u.startswith("https://") for m in members for u in [m.split("=", 1)[1]])
        check_api_access(name, docs, spec, backup)
        print(f"chart {name}: {len(docs)} manifests valid for Kubernetes {K8S} ({', '.join(sorted(kinds))})")
    # refused: backups of a multi-member cluster on each member's own volume
    refused = merge(defaults, {"replicas": 3})
    try:
        render(renderer, refused)
    except SystemExit as e:
        assert "needs a shared object store" in str(e), e
        print("chart: 3 replicas with a Local store refused")
    else:
        raise SystemExit("3 replicas with a Local store must be refused")
    try:
        render(renderer, merge(defaults, {"backup": {"auth": {"clientCertificates": True}}}))
    except SystemExit as e:
        assert "needs backup.tls.enabled" in str(e), e
        print("chart: client certificates without TLS refused")
    else:
        raise SystemExit("client certificates without TLS must be refused")


if __name__ == "__main__":
    main()
