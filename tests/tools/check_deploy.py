"""Checks the deployment files against weir itself, for tests/deploy.rs: this machine has no
Docker engine or Kubernetes cluster, so what can be checked without them is checked here.

usage: check_deploy.py REPO WEIR_BINARY METRICS_TEXT

- docker-compose.yml: every file or directory it mounts or builds from exists; every
  WEIR_* variable it sets is one weir reads; every published port of a weir service is the
  port weir listens on in it; services it depends on exist; the config file it mounts
  has only keys weir knows.
- Dockerfile: multi-stage, a numeric non-root USER, a HEALTHCHECK on /healthz, CA
  certificates, WEIR_* variables weir reads, EXPOSEd ports weir listens on, COPY sources
  that exist.
- deploy/k8s/: the kustomization's resources exist; the Deployment's WEIR_* variables are
  weir's; its probes ask /healthz and /readyz on a named container port; the Secret and
  ConfigMap keys it references exist; the Service's target port, the ServiceMonitor's
  port and the PodDisruptionBudget's selector match the Deployment.
- deploy/grafana/: every metric a dashboard query names is one weir exports (from
  connectors/src/metrics.rs, plus the process_* ones); the provisioning's paths match
  the compose mounts; no series of a running weir's /metrics (METRICS_TEXT) has a
  per-device label.
- deploy/prometheus.yml scrapes weir services of the compose file on their API port.

Prints each problem and exits 1 if there is any.
"""

import json
import os
import re
import subprocess
import sys
import tomllib

import yaml

repo, weir, metrics_text = sys.argv[1], sys.argv[2], sys.argv[3]
problems = []


def problem(msg):
    problems.append(msg)


def path(rel):
    return os.path.join(repo, rel)


# What weir reads: the variables and flags of `weir serve --help` and `weir rules --help`.
def help_text(*args):
    return subprocess.run([weir, *args, "--help"], capture_output=True, text=True, check=True).stdout


serve_help = help_text("serve")
rules_help = help_text("rules")
weir_env = set(re.findall(r"\[env: (WEIR_[A-Z0-9_]+)", serve_help + rules_help))
# The admin token comes from the environment without a flag (docs/security.md).
weir_env.add("WEIR_ADMIN_TOKEN")
serve_flags = set(re.findall(r"--([a-z0-9-]+)", serve_help))
if len(weir_env) < 20:
    problem(f"weir --help lists too few variables to check against: {sorted(weir_env)}")


def check_env(where, names):
    for name in names:
        if name.startswith("WEIR_") and name not in weir_env:
            problem(f"{where}: {name} is not a variable weir reads")


def listen_port(env, var, default):
    value = env.get(var)
    if value is None:
        return default
    return int(str(value).rsplit(":", 1)[1])


# --- the Dockerfile
dockerfile = open(path("Dockerfile")).read()
stages = re.findall(r"^FROM ", dockerfile, re.M)
if len(stages) < 2:
    problem("Dockerfile: not a multi-stage build")
users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
if not users or not users[-1].isdigit() or users[-1] == "0":
    problem(f"Dockerfile: the final USER must be a numeric non-root uid, got {users}")
if not re.search(r"^HEALTHCHECK .*/healthz", dockerfile, re.M):
    problem("Dockerfile: no HEALTHCHECK on /healthz")
if "ca-certificates" not in dockerfile:
    problem("Dockerfile: no CA certificates")
image_env = dict(re.findall(r"(WEIR_[A-Z0-9_]+)=(\S+)", dockerfile))
check_env("Dockerfile", image_env)
exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", dockerfile, re.M) for p in line.split()}
image_ports = {listen_port(image_env, "WEIR_HTTP_LISTEN", 8080), listen_port(image_env, "WEIR_MQTT_LISTEN", 1883)}
if exposed != image_ports:
    problem(f"Dockerfile: EXPOSE {sorted(exposed)} but weir listens on {sorted(image_ports)}")
for src in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
    if src != "." and not any(
        os.path.exists(p) for p in [path(src)] + ([path(os.path.dirname(src))] if "*" in src else [])
    ):
        problem(f"Dockerfile: COPY {src}: no such file")

# --- docker-compose.yml
compose = yaml.safe_load(open(path("docker-compose.yml")))
services = compose.get("services", {})
named_volumes = set((compose.get("volumes") or {}).keys())
weir_services = {}
for name, svc in services.items():
    build = svc.get("build")
    if build:
        context = build if isinstance(build, str) else build.get("context", ".")
        if not os.path.isfile(os.path.join(path(context), "Dockerfile")):
            problem(f"compose {name}: no Dockerfile in build context {context}")
    for v in svc.get("volumes", []) or []:
        source = v.split(":")[0]
        if source.startswith("."):
            if not os.path.exists(path(source)):
                problem(f"compose {name}: mounts {source}, which does not exist")
        elif source not in named_volumes:
            problem(f"compose {name}: volume {source} is not declared")
    deps = svc.get("depends_on") or []
    for d in deps if isinstance(deps, list) else deps.keys():
        if d not in services:
            problem(f"compose {name}: depends on {d}, which is no service")
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    check_env(f"compose {name}", env)
    if build:
        weir_services[name] = (svc, env)
for name, (svc, env) in weir_services.items():
    if svc.get("command", ["serve"])[0] != "serve":
        continue
    http = listen_port(env, "WEIR_HTTP_LISTEN", listen_port(image_env, "WEIR_HTTP_LISTEN", 8080))
    mqtt = listen_port(env, "WEIR_MQTT_LISTEN", listen_port(image_env, "WEIR_MQTT_LISTEN", 1883))
    for p in svc.get("ports", []) or []:
        container = int(str(p).rsplit(":", 1)[1])
        if container not in (http, mqtt):
            problem(f"compose {name}: publishes container port {container}, weir listens on {http} and {mqtt}")
    config = env.get("WEIR_CONFIG")
    if config:
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", []) if v.startswith(".")}
        host = mounts.get(config)
        if host is None:
            problem(f"compose {name}: WEIR_CONFIG={config} is not mounted")
        else:
            for key in tomllib.load(open(path(host), "rb")):
                if key != "connections" and key.replace("_", "-") not in serve_flags:
                    problem(f"{host}: {key} is not a setting of weir serve")
    store = env.get("WEIR_RULE_STORE", "")
    if store and not store.startswith("postgres"):
        problem(f"compose {name}: WEIR_RULE_STORE is not a postgres URL")
    elif store:
        host = re.match(r"postgres(?:ql)?://[^@]*@([^:/]+)", store)
        if not host or host.group(1) not in services:
            problem(f"compose {name}: the rule store's host is no service")
    broker = env.get("WEIR_BROKER", "")
    if broker and re.match(r"mqtts?://([^:/]+)", broker).group(1) not in services:
        problem(f"compose {name}: the broker's host is no service")
if len([n for n, (s, _) in weir_services.items() if s.get("command", ["serve"])[0] == "serve"]) < 2:
    problem("compose: fewer than two weir replicas")
for wanted in ["postgres", "mosquitto", "kafka", "minio", "prometheus", "grafana", "simulator"]:
    if wanted not in services:
        problem(f"compose: no {wanted} service")

# --- deploy/prometheus.yml: it scrapes the weir replicas on their API port
prom = yaml.safe_load(open(path("deploy/prometheus.yml")))
targets = {t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
for name, (svc, env) in weir_services.items():
    if svc.get("command", ["serve"])[0] == "serve":
        http = listen_port(env, "WEIR_HTTP_LISTEN", listen_port(image_env, "WEIR_HTTP_LISTEN", 8080))
        if f"{name}:{http}" not in targets:
            problem(f"deploy/prometheus.yml does not scrape {name}:{http}")

# --- Grafana: the dashboards' metrics are weir's
source = open(path("connectors/src/metrics.rs")).read()
metrics = set(re.findall(r'"(weir_[a-z0-9_]+)"', source))
metrics |= {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"}
histograms = set(re.findall(r'histogram\w*\(\s*"(weir_[a-z0-9_]+)"', source, re.S))
for h in set(re.findall(r'HistogramOpts::new\(\s*"(weir_[a-z0-9_]+)"', source, re.S)) | histograms:
    metrics |= {h + "_bucket", h + "_sum", h + "_count"}
exported = open(metrics_text).read()
labels = set(re.findall(r'[{,]([a-z_]+)="', exported))
per_device = labels & {"client_id", "clientid", "device", "topic", "principal", "source_ip"}
if per_device:
    problem(f"/metrics: per-device labels {sorted(per_device)}")
if "weir_rule_messages_matched_total" not in exported:
    problem("/metrics: the running weir exported no rule series to check")
dash_dir = path("deploy/grafana/dashboards")
dashboards = [f for f in os.listdir(dash_dir) if f.endswith(".json")]
if not dashboards:
    problem("deploy/grafana/dashboards: no dashboard")
exprs = 0
for f in dashboards:
    dash = json.load(open(os.path.join(dash_dir, f)))
    for panel in dash.get("panels", []):
        for t in panel.get("targets", []):
            exprs += 1
            for m in re.findall(r"\b((?:weir|process)_[a-z0-9_]+)", t["expr"]):
                if m not in metrics:
                    problem(f"{f}: panel '{panel['title']}' asks for {m}, which weir does not export")
if exprs < 10:
    problem(f"the dashboards have only {exprs} queries")
provider = yaml.safe_load(open(path("deploy/grafana/provisioning/dashboards/weir.yml")))
grafana_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
for p in provider["providers"]:
    if grafana_mounts.get(p["options"]["path"]) != "./deploy/grafana/dashboards":
        problem("grafana: the dashboard provider's path is not where compose mounts the dashboards")

# --- Kubernetes
k8s = path("deploy/k8s")
kust = yaml.safe_load(open(os.path.join(k8s, "kustomization.yaml")))
docs = {}
for r in kust["resources"]:
    p = os.path.join(k8s, r)
    if not os.path.isfile(p):
        problem(f"kustomization: {r} does not exist")
        continue
    for d in yaml.safe_load_all(open(p)):
        docs[d["kind"]] = d
kinds = ["Deployment", "Service", "ConfigMap", "Secret", "ServiceMonitor", "PodDisruptionBudget"]
for kind in kinds:
    if kind not in docs:
        problem(f"deploy/k8s: no {kind}")
if all(kind in docs for kind in kinds):
    dep = docs["Deployment"]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    if dep["spec"]["selector"]["matchLabels"].items() - pod_labels.items():
        problem("Deployment: its selector does not select its pods")
    if dep["spec"].get("replicas", 1) < 2:
        problem("Deployment: fewer than two replicas")
    secret_keys = set((docs["Secret"].get("stringData") or docs["Secret"].get("data") or {}).keys())
    config_data = docs["ConfigMap"]["data"]
    (container,) = pod["spec"]["containers"]
    env_names = {e["name"] for e in container.get("env", [])}
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref and (ref["name"] != docs["Secret"]["metadata"]["name"] or ref["key"] not in secret_keys):
            problem(f"Deployment: {e['name']} takes {ref}, which the Secret does not have")
    for ef in container.get("envFrom", []):
        if ef.get("configMapRef", {}).get("name") == docs["ConfigMap"]["metadata"]["name"]:
            env_names |= {k for k in config_data if re.fullmatch(r"[A-Z0-9_]+", k)}
    check_env("Deployment", env_names)
    port_names = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    http = next((int(e["value"].rsplit(":", 1)[1]) for e in container.get("env", []) if e["name"] == "WEIR_HTTP_LISTEN"), 8080)
    if port_names.get("http") != http:
        problem(f"Deployment: port http is {port_names.get('http')}, weir listens on {http}")
    for probe, want in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != want or get.get("port") not in port_names:
            problem(f"Deployment: {probe} must ask {want} on a named port, got {get}")
    for m in container.get("volumeMounts", []):
        vols = {v["name"]: v for v in pod["spec"]["volumes"]}
        v = vols.get(m["name"])
        if v is None:
            problem(f"Deployment: mounts {m['name']}, which is no volume")
        elif "configMap" in v and m.get("subPath") and m["subPath"] not in config_data:
            problem(f"Deployment: mounts {m['subPath']} of the ConfigMap, which it does not have")
    if "WEIR_CONFIG" in config_data:
        mounted = {m["mountPath"] for m in container.get("volumeMounts", [])}
        if config_data["WEIR_CONFIG"] not in mounted:
            problem("Deployment: WEIR_CONFIG names a file that is not mounted")
        for key in tomllib.loads(config_data.get("weir.toml", "")):
            if key != "connections" and key.replace("_", "-") not in serve_flags:
                problem(f"ConfigMap weir.toml: {key} is not a setting of weir serve")
    svc = docs["Service"]
    if svc["spec"]["selector"].items() - pod_labels.items():
        problem("Service: its selector does not select the Deployment's pods")
    for p in svc["spec"]["ports"]:
        if p["targetPort"] not in port_names:
            problem(f"Service: target port {p['targetPort']} is no container port")
    sm = docs["ServiceMonitor"]
    if sm["spec"]["selector"]["matchLabels"].items() - svc["metadata"].get("labels", {}).items():
        problem("ServiceMonitor: its selector does not select the Service")
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        if ep["port"] not in svc_ports or ep.get("path", "/metrics") != "/metrics":
            problem(f"ServiceMonitor: endpoint {ep} is not the Service's /metrics")
    pdb = docs["PodDisruptionBudget"]
    if pdb["spec"]["selector"]["matchLabels"].items() - pod_labels.items():
        problem("PodDisruptionBudget: its selector does not select the Deployment's pods")

for p in problems:
    print(p)
print(f"{len(problems)} problems")
sys.exit(1 if problems else 0)
