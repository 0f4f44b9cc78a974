#!/usr/bin/env python3
"""Cross-checks of examples/k8s/ that a schema validator cannot make: the
parts of job.yaml, service.yaml and podmonitor.yaml that must agree with each
other and with airamp for the recipe to work. Run by scripts/check-k8s (needs
PyYAML, which kubernetes-validate installs). Exits 1 listing every failure."""
import sys
from pathlib import Path

import yaml

d = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/k8s")
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)


def load(name):
    docs = [x for x in yaml.safe_load_all((d / name).read_text()) if x]
    assert len(docs) == 1, f"{name}: expected one object, found {len(docs)}"
    return docs[0]


job, svc, pm = load("job.yaml"), load("service.yaml"), load("podmonitor.yaml")
check(job["kind"] == "Job" and svc["kind"] == "Service", "job.yaml/service.yaml kinds")
pod = job["spec"]["template"]
spec = pod["spec"]
labels = pod["metadata"]["labels"]

# enableServiceLinks: false, and no Service whose links would be AIRAMP_*.
check(spec.get("enableServiceLinks") is False, "pod spec must set enableServiceLinks: false")
check(not svc["metadata"]["name"].lower().startswith("airamp"),
      f"Service {svc['metadata']['name']!r} would inject AIRAMP_* variables")

# The plugin volume: an emptyDir, filled by the initContainer at the path it
# is given, mounted by the training container where NCCL_NET_PLUGIN points.
inits = spec.get("initContainers", [])
check(len(inits) == 1, "exactly one initContainer (the plugin copier)")
(train,) = [c for c in spec["containers"] if c["name"] == "train"]
vols = {v["name"]: v for v in spec["volumes"]}
init = inits[0]
init_mounts = {m["name"]: m["mountPath"] for m in init.get("volumeMounts", [])}
train_mounts = {m["name"]: m["mountPath"] for m in train.get("volumeMounts", [])}
env = {e["name"]: e for e in train.get("env", [])}
shared = [n for n in init_mounts if n in train_mounts]
check(len(shared) == 1, f"initContainer and train share one volume (found {shared})")
if shared:
    vol = shared[0]
    check("emptyDir" in vols.get(vol, {}), f"volume {vol} must be an emptyDir")
    dest = (init.get("args") or ["/plugin"])[0]
    check(dest == init_mounts[vol],
          f"initContainer copies into {dest}, but the volume is mounted at {init_mounts[vol]}")
    plugin = env.get("NCCL_NET_PLUGIN", {}).get("value", "")
    want = train_mounts[vol].rstrip("/") + "/libnccl-net-airamp.so"
    check(plugin == want, f"NCCL_NET_PLUGIN={plugin!r}, the copy is at {want!r}")
check(init.get("securityContext", {}).get("readOnlyRootFilesystem") is True,
      "initContainer: readOnlyRootFilesystem (it writes only to the volume)")

# Metrics: the pod IP through the downward API, one named port per local rank
# (9090 + LOCAL_RANK), the annotation on rank 0's port, the PodMonitor on all.
addr = env.get("AIRAMP_METRICS_ADDR", {})
check(addr.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP",
      "AIRAMP_METRICS_ADDR must come from status.podIP")
args = train.get("args", [])
nproc = [int(a.split("=", 1)[1]) for a in args if a.startswith("--nproc-per-node=")]
check(len(nproc) == 1, "torchrun --nproc-per-node=N in args")
ports = {p["name"]: p["containerPort"] for p in train.get("ports", [])}
n = nproc[0] if nproc else 0
for r in range(n):
    check(ports.get(f"metrics-{r}") == 9090 + r, f"port metrics-{r} must be {9090 + r}")
gpus = int(train.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
check(gpus == n, f"nvidia.com/gpu {gpus} != --nproc-per-node {n}")
ann = pod["metadata"].get("annotations", {})
check(ann.get("prometheus.io/scrape") == "true", "prometheus.io/scrape annotation")
check(int(ann.get("prometheus.io/port", 0)) == 9090, "prometheus.io/port must be 9090")
check(pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor",
      "podmonitor.yaml: monitoring.coreos.com/v1 PodMonitor")
sel = pm["spec"]["selector"]["matchLabels"]
check(all(labels.get(k) == v for k, v in sel.items()), "PodMonitor selector must match the pod labels")
pm_ports = [e["port"] for e in pm["spec"]["podMetricsEndpoints"]]
check(sorted(pm_ports) == sorted(f"metrics-{r}" for r in range(n)),
      f"PodMonitor ports {pm_ports} must be metrics-0..metrics-{n - 1}")
known = {"port", "path", "interval", "scheme", "scrapeTimeout", "honorLabels",
         "relabelings", "metricRelabelings", "params", "targetPort"}
for e in pm["spec"]["podMetricsEndpoints"]:
    check(set(e) <= known, f"PodMonitor endpoint fields {sorted(set(e) - known)} unknown")

# Rendezvous: headless Service selecting the pods, pods in its subdomain,
# torchrun's master the DNS name of index 0, node rank from the index.
check(svc["spec"].get("clusterIP") == "None", "rendezvous Service must be headless")
check(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()),
      "Service selector must match the pod labels")
check(spec.get("subdomain") == svc["metadata"]["name"], "pod subdomain must be the Service name")
check(job["spec"].get("completionMode") == "Indexed", "Indexed Job (stable pod names, node rank)")
master = f"--master-addr={job['metadata']['name']}-0.{svc['metadata']['name']}"
check(master in args, f"torchrun needs {master}")
nnodes = [a for a in args if a.startswith("--nnodes=")]
check(nnodes == [f"--nnodes={job['spec']['completions']}"], "--nnodes must equal completions")
check("--node-rank=$(NODE_RANK)" in args and "NODE_RANK" in env, "--node-rank from NODE_RANK")
idx = env.get("NODE_RANK", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
check("job-completion-index" in idx, "NODE_RANK from the job completion index")
mport = [a for a in args if a.startswith("--master-port=")]
check(mport == [f"--master-port={ports.get('rdzv')}"], "--master-port must be the rdzv port")
check(svc["spec"]["ports"][0]["port"] == ports.get("rdzv"), "Service port must be the rdzv port")

if failures:
    for f in failures:
        print(f"k8s_crosscheck: FAIL: {f}", file=sys.stderr)
    sys.exit(1)
print(f"k8s_crosscheck: {d}: all cross-checks pass")
