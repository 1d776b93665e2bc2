"""Checks deploy/kubernetes without a cluster (run by scripts/check-deploy).

1. Every manifest kustomization.yaml lists validates, strictly (unknown fields
   refused), against Kubernetes' OpenAPI schemas as kubernetes-validate ships
   them, for each version in KUBERNETES_VERSIONS; the ServiceMonitor (a CRD
   those schemas lack) against the Prometheus Operator's CRD schema
   (servicemonitor.js). Each validator is first shown a broken copy, which it
   must refuse, so a validator that passes everything fails the check.
2. The manifests agree with each other and with the config they carry:
   selectors, ports, probes, security context, mounts, and the grace period
   against the shutdown delay.
3. The ConfigMap's stackpass.toml passes the real `stackpass config check`,
   with /etc/stackpass/ (where the pods mount the ConfigMaps and Secrets)
   replaced by a directory holding the same files: the config and stacks
   file, the policy, a key set from `stackpass keys generate` (mode 0440 when
   run as root, as the kubelet mounts a Secret with an fsGroup), a catalog
   token and a CA bundle.

Prints one line per check; exits 1 if any failed.
"""

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
HERE = Path(__file__).resolve().parent
# The oldest Kubernetes release still supported upstream when this was
# written, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.32.0", "1.37.0"]
MOUNT_ROOT = "/etc/stackpass/"

failures = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail and not ok else ''}")
    if not ok:
        failures.append(name)


def load_resources(directory=KUBE):
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((directory / name).read_text()):
            if doc:
                docs.append((str((directory / name).relative_to(KUBE)), doc))
    return kustomization, docs


def one(docs, kind, name=None):
    found = [d for _, d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def k8s_valid(doc, version):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
        return None
    except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
        return str(error).splitlines()[0]


def crd_valid(monitors):
    result = subprocess.run(
        ["node", str(HERE / "servicemonitor.js")],
        input=json.dumps(monitors),
        capture_output=True,
        text=True,
        cwd=HERE,
    )
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def validate_schemas(docs):
    for version in KUBERNETES_VERSIONS:
        broken = copy.deepcopy(one(docs, "Deployment"))
        broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
        check(f"kubernetes-validate {version} refuses a misspelt field", k8s_valid(broken, version) is not None)
        for file, doc in docs:
            if doc["kind"] == "ServiceMonitor":
                continue
            error = k8s_valid(doc, version)
            check(f"{file}: {doc['kind']}/{doc['metadata']['name']} valid for Kubernetes {version}", error is None, error)
    monitors = [d for _, d in docs if d["kind"] == "ServiceMonitor"]
    broken = copy.deepcopy(monitors[0])
    broken["spec"]["endpoints"][0]["interval"] = "every minute"
    ok, output = crd_valid([broken])
    check("the ServiceMonitor schema refuses a bad interval", not ok, output)
    ok, output = crd_valid(monitors)
    check("servicemonitor.yaml valid for the Prometheus Operator's CRD", ok, output)


def seconds(duration):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert match, f"unexpected duration {duration}"
    return int(match.group(1)) * units[match.group(2)]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_consistency(kustomization, docs):
    deployment = one(docs, "Deployment")
    service = one(docs, "Service")
    config_map = one(docs, "ConfigMap", "stackpass-config")
    config = tomllib.loads(config_map["data"]["stackpass.toml"])
    pod = deployment["spec"]["template"]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    [container] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    security = container["securityContext"]

    check("at least two replicas", deployment["spec"]["replicas"] >= 2)
    check("the Deployment's selector selects its pods", selects(deployment["spec"]["selector"]["matchLabels"], pod_labels))
    check("readiness probe on /readyz", container["readinessProbe"]["httpGet"]["path"] == "/readyz")
    check("liveness probe on /healthz", container["livenessProbe"]["httpGet"]["path"] == "/healthz")
    check(
        "the API port is the config's server.listen port",
        ports["http"] == int(config["server"]["listen"].rsplit(":", 1)[1]),
    )
    check(
        "the metrics port is the config's metrics.listen port",
        ports["metrics"] == int(config["metrics"]["listen"].rsplit(":", 1)[1]),
    )
    grace = pod["terminationGracePeriodSeconds"]
    needed = seconds(config["server"]["shutdown_delay"]) + seconds(config["server"]["request_timeout"])
    check(
        "terminationGracePeriodSeconds > shutdown_delay + request_timeout",
        grace > needed,
        f"{grace} <= {needed}",
    )
    check("shutdown_delay is set", seconds(config["server"]["shutdown_delay"]) > 0)
    check(
        "readiness fails over well within shutdown_delay",
        container["readinessProbe"]["periodSeconds"] * container["readinessProbe"]["failureThreshold"]
        < seconds(config["server"]["shutdown_delay"]),
    )
    check("pod runs as non-root", pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0)
    check("seccomp RuntimeDefault", pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault")
    check("read-only root filesystem", security["readOnlyRootFilesystem"] is True)
    check("all capabilities dropped", security["capabilities"]["drop"] == ["ALL"])
    check("no privilege escalation", security["allowPrivilegeEscalation"] is False)
    check(
        "resource requests and limits",
        all(k in container["resources"].get(s, {}) for s in ("requests", "limits") for k in ("cpu", "memory")),
    )
    check("no service account token", pod["automountServiceAccountToken"] is False)

    # The image and the pod agree on the user and the config path.
    for name in ("Containerfile", "Containerfile.local"):
        text = (ROOT / "deploy" / name).read_text()
        user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
        check(f"{name}: a numeric USER, the pod's runAsUser", user and int(user.group(1)) == pod["securityContext"]["runAsUser"])
        cmd = re.search(r"^CMD (.*)$", text, re.M)
        check(f"{name}: CMD is the pod's args", cmd and json.loads(cmd.group(1)) == container["args"])
    final = lambda text: text[text.index("FROM scratch"):]
    check(
        "Containerfile's final stage is Containerfile.local's",
        final((ROOT / "deploy/Containerfile").read_text()).replace("--from=build /rootfs/", "rootfs/")
        == final((ROOT / "deploy/Containerfile.local").read_text()),
    )

    # Mounts: whole directories (updated in place), at the config's paths.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    check("no subPath mounts (they never update)", all("subPath" not in m for m in mounts.values()))
    check("every mount read-only", all(m.get("readOnly") for m in mounts.values()))
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    check(
        "the config is mounted from the ConfigMap",
        volumes[[n for n, m in mounts.items() if m["mountPath"] == str(config_path.parent)][0]]["configMap"]["name"]
        == "stackpass-config",
    )

    def mounted_from(path):
        for name, mount in mounts.items():
            if str(path).startswith(mount["mountPath"].rstrip("/") + "/") or str(path) == mount["mountPath"]:
                return volumes[name]
        return None

    def secret(path):
        volume = mounted_from(path)
        return volume.get("secret", {}).get("secretName") if volume else None

    check("issuer.key_dir is the signing-key Secret", secret(config["issuer"]["key_dir"]) == "stackpass-signing-keys")
    check(
        "catalog.token_file is in the catalog-token Secret",
        secret(config["catalog"]["token_file"]) == "stackpass-catalog-token",
    )
    check(
        "Secrets are readable by their group only (0440)",
        all(v["secret"]["defaultMode"] == 0o440 for v in volumes.values() if "secret" in v),
    )
    check("the fsGroup is the pod's group", pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"])
    for path in config["policy"]["files"]:
        volume = mounted_from(path)
        check(f"policy {path} is the policy ConfigMap", volume and volume["configMap"]["name"] == "stackpass-policy")
    check("PGPASSWORD comes from a Secret", any(e["name"] == "PGPASSWORD" and "secretKeyRef" in e["valueFrom"] for e in container["env"]))
    check("audit.url names no password", "@" in config["audit"]["url"] and ":" not in config["audit"]["url"].split("//")[1].split("@")[0])

    # Service, disruption budget, network policy, monitor.
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    check("the Service selects the pods", selects(service["spec"]["selector"], pod_labels))
    check(
        "the Service's ports target the pod's",
        all(p["targetPort"] in ports for p in service_ports.values()),
    )
    pdb = one(docs, "PodDisruptionBudget")
    check("the PodDisruptionBudget selects the pods", selects(pdb["spec"]["selector"]["matchLabels"], pod_labels))
    check(
        "the PodDisruptionBudget leaves a replica up",
        pdb["spec"].get("maxUnavailable", 0) < deployment["spec"]["replicas"] or pdb["spec"].get("minAvailable", 0) >= 1,
    )
    policy = one(docs, "NetworkPolicy")
    check("the NetworkPolicy selects the pods", selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels))
    check("the NetworkPolicy restricts both directions", sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"])
    ingress_ports = {
        p["port"]: rule.get("from") for rule in policy["spec"]["ingress"] for p in rule["ports"]
    }
    check("ingress opens only the API and metrics ports", set(ingress_ports) == {ports["http"], ports["metrics"]})
    check(
        "metrics only from the monitoring namespace",
        ingress_ports[ports["metrics"]]
        == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    )
    egress_ports = sorted({(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]})
    check(
        "egress only to DNS, PostgreSQL, Backstage and HTTPS",
        egress_ports == [(53, "TCP"), (53, "UDP"), (443, "TCP"), (5432, "TCP"), (7007, "TCP")],
        str(egress_ports),
    )
    monitor = one(docs, "ServiceMonitor")
    check("the ServiceMonitor selects the Service", selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]))
    check(
        "the ServiceMonitor scrapes /metrics on the metrics port",
        [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("metrics", "/metrics")],
    )
    check(
        "the ServiceMonitor looks in the kustomization's namespace",
        monitor["spec"]["namespaceSelector"]["matchNames"] == [kustomization["namespace"]],
    )
    return config_map


def config_check(stackpass, docs, config_map):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        substitute = lambda text: text.replace(MOUNT_ROOT, f"{base}/")
        (base / "config").mkdir()
        for name, text in config_map["data"].items():
            (base / "config" / name).write_text(substitute(text))
        (base / "policy").mkdir()
        for name, text in one(docs, "ConfigMap", "stackpass-policy")["data"].items():
            (base / "policy" / name).write_text(text)
        keys = base / "keys"
        generated = subprocess.run([stackpass, "keys", "generate", "--dir", str(keys)], capture_output=True, text=True)
        check("stackpass keys generate makes the Secret's content", generated.returncode == 0, generated.stderr)
        if os.geteuid() == 0:
            # The kubelet's shape for a Secret with an fsGroup: root-owned, 0440.
            for key in keys.glob("*.pem"):
                key.chmod(0o440)
        (base / "catalog").mkdir()
        (base / "catalog" / "token").write_text("a-catalog-token")
        (base / "internal-ca").mkdir()
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", base / "internal-ca" / "ca.crt")
        env = {k: v for k, v in os.environ.items() if not k.startswith("STACKPASS_")}
        result = subprocess.run(
            [stackpass, "config", "check", "--config", str(base / "config" / "stackpass.toml")],
            capture_output=True,
            text=True,
            env=env,
        )
        check(
            "stackpass config check passes the ConfigMap's config with the Secrets at their paths",
            result.returncode == 0,
            (result.stdout + result.stderr).strip(),
        )
        if result.returncode == 0:
            print(f"     {result.stdout.strip()}")


def check_setup_job(docs, setup_docs):
    for version in KUBERNETES_VERSIONS:
        for file, doc in setup_docs:
            error = k8s_valid(doc, version)
            check(f"{file}: {doc['kind']}/{doc['metadata']['name']} valid for Kubernetes {version}", error is None, error)
    job = one(setup_docs, "Job")
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    broker_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    check(
        "the Service does not select the migration Job's pod",
        not selects(one(docs, "Service")["spec"]["selector"], job["spec"]["template"]["metadata"]["labels"]),
    )
    check(
        "the migration Job runs setup-postgres as the owner for the config's runtime role",
        container["args"][:2] == ["audit", "setup-postgres"]
        and container["args"][container["args"].index("--runtime-role") + 1]
        == tomllib.loads(one(docs, "ConfigMap", "stackpass-config")["data"]["stackpass.toml"])["audit"]["url"]
        .split("//")[1]
        .split("@")[0],
    )
    check(
        "the migration Job's own NetworkPolicy selects it",
        selects(one(setup_docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], job["spec"]["template"]["metadata"]["labels"])
        and not selects(one(setup_docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], broker_labels),
    )
    check(
        "the migration Job is locked down like the broker",
        container["securityContext"]["readOnlyRootFilesystem"] and container["securityContext"]["capabilities"]["drop"] == ["ALL"],
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stackpass", required=True)
    args = parser.parse_args()
    kustomization, docs = load_resources()
    validate_schemas(docs)
    _, setup_docs = load_resources(KUBE / "setup-postgres")
    check_setup_job(docs, setup_docs)
    config_map = check_consistency(kustomization, docs)
    config_check(args.stackpass, docs, config_map)
    print(f"{len(failures)} failed" if failures else "all deploy checks passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
