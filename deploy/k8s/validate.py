#!/usr/bin/python3
"""Checks the Kubernetes manifests offline, with no cluster to ask.

  deploy/k8s/validate.py RENDERED.yaml [--binaries DIR]

RENDERED.yaml is `kubectl kustomize deploy/k8s`. Each object is checked
against the Kubernetes API's own types as the official Python client
(Debian's python3-kubernetes) defines them: every field known, every value of
its type, required fields present. Then what ties the objects together:
Services select pods and name their ports, probes and mounts name what
exists, claims are declared, the coordinator waits for as many workers as the
StatefulSet runs, workers reach the coordinator's internal Service, grace
periods outlast the drains they wrap. With --binaries (a directory holding
coordinator/coordinator and worker/worker, e.g. bazel-bin), every flag the
manifests pass must be one the binary knows. Exits 1 listing every problem.
"""
import argparse
import re
import subprocess
import sys

import yaml
from kubernetes import client

KINDS = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("v1", "Service"): "V1Service",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("v1", "Secret"): "V1Secret",
    ("v1", "ConfigMap"): "V1ConfigMap",
}


def check_type(value, type_name, path, problems):
    """Checks `value` against a type name of the client's openapi_types."""
    if value is None:
        return
    if type_name == "object":
        return
    if type_name.startswith("list["):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            check_type(item, type_name[5:-1], f"{path}[{i}]", problems)
        return
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a map")
            return
        inner = type_name[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            check_type(item, inner, f"{path}.{key}", problems)
        return
    scalars = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "date": str}
    if type_name in scalars:
        # YAML reads 8000 as an int: an int-or-string field (IntOrString) is typed "object".
        ok = isinstance(value, scalars[type_name]) and not (type_name == "int" and isinstance(value, bool))
        if not ok:
            problems.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    model = getattr(client, type_name, None)
    if model is None:
        problems.append(f"{path}: unknown type {type_name}")
        return
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object ({type_name})")
        return
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json:
            problems.append(f"{path}: unknown field {key!r} in {type_name}")
            continue
        check_type(item, model.openapi_types[by_json[key]], f"{path}.{key}", problems)


def check_required(obj, type_name, path, problems):
    """Builds the client's model, whose constructors refuse missing required fields."""
    try:
        client.ApiClient()._ApiClient__deserialize(obj, type_name)
    except (ValueError, TypeError) as error:
        problems.append(f"{path}: {error}")


def flags(container):
    """--name=value arguments of a container, by name."""
    out = {}
    for arg in container.get("args", []):
        match = re.fullmatch(r"--([A-Za-z0-9_]+)(?:=(.*))?", arg)
        if match:
            out[match.group(1)] = match.group(2)
    return out


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def check_links(objects, problems):
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    for w in workloads:
        name = w["metadata"]["name"]
        labels = w["spec"]["template"]["metadata"].get("labels", {})
        selector = w["spec"]["selector"].get("matchLabels", {})
        if any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{name}: its selector does not match its pod template's labels")
        spec = pod_spec(w)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim and claim not in claims:
                problems.append(f"{name}: volume {v['name']} claims {claim}, which no manifest declares")
        for c in spec["containers"]:
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                for action in ("httpGet", "tcpSocket", "grpc"):
                    port = c.get(probe, {}).get(action, {}).get("port")
                    if port is not None and port not in ports:
                        problems.append(f"{name}/{c['name']}: {probe} names port {port!r}, which it does not open")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problems.append(f"{name}/{c['name']}: mounts {m['name']}, which is no volume of the pod")
    for s in services.values():
        selected = [w for w in workloads
                    if all(w["spec"]["template"]["metadata"].get("labels", {}).get(k) == v
                           for k, v in s["spec"].get("selector", {}).items())]
        if not selected:
            problems.append(f"Service {s['metadata']['name']} selects no pod")
            continue
        for port in s["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for w in selected:
                opened = set()
                for c in pod_spec(w)["containers"]:
                    opened |= {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
                if target not in opened:
                    problems.append(f"Service {s['metadata']['name']}: port {target!r} is not opened by {w['metadata']['name']}")
    by_binary = {}
    for w in workloads:
        for c in pod_spec(w)["containers"]:
            binary = c.get("command", [""])[0].rsplit("/", 1)[-1]
            by_binary[binary] = (w, c)
    if "coordinator" in by_binary and "worker" in by_binary:
        (cw, cc), (ww, wc) = by_binary["coordinator"], by_binary["worker"]
        cf, wf = flags(cc), flags(wc)
        if int(cf.get("workers", 1)) != ww["spec"].get("replicas", 1):
            problems.append(f"the coordinator waits for --workers={cf.get('workers', 1)}, the StatefulSet runs "
                            f"{ww['spec'].get('replicas', 1)}")
        host, _, port = wf.get("coordinator", "").partition(":")
        internal = services.get(host)
        if internal is None or int(port or 0) not in [p["port"] for p in internal["spec"]["ports"]]:
            problems.append(f"workers' --coordinator={wf.get('coordinator')} is no Service port")
        for (w, f, flag) in ((cw, cf, "shutdown_grace_s"), (ww, wf, "drain_timeout_s")):
            grace = pod_spec(w).get("terminationGracePeriodSeconds", 30)
            if flag in f and float(f[flag]) >= grace:
                problems.append(f"{w['metadata']['name']}: terminationGracePeriodSeconds {grace} does not outlast "
                                f"--{flag}={f[flag]}")
        if cf.get("model") is None or cf.get("model") not in [m["mountPath"] for m in wc.get("volumeMounts", [])]:
            problems.append("workers do not mount the model where the coordinator's --model says (they load from it)")


def check_flags(objects, binaries, problems):
    for w in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet")):
        for c in pod_spec(w)["containers"]:
            binary = c.get("command", [""])[0].rsplit("/", 1)[-1]
            path = f"{binaries}/{binary}/{binary}"
            help_text = subprocess.run([path, "--helpfull"], capture_output=True, text=True).stdout
            known = set(re.findall(r"--([A-Za-z0-9_]+) \(", help_text))
            for flag in flags(c):
                if flag not in known:
                    problems.append(f"{w['metadata']['name']}/{c['name']}: {binary} has no flag --{flag}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--binaries")
    args = parser.parse_args()
    objects = [o for o in yaml.safe_load_all(open(args.rendered)) if o]
    problems = []
    for obj in objects:
        key = (obj.get("apiVersion"), obj.get("kind"))
        name = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
        if key not in KINDS:
            problems.append(f"{name}: {key} is not a kind this check knows")
            continue
        check_type(obj, KINDS[key], name, problems)
        check_required(obj, KINDS[key], name, problems)
    check_links(objects, problems)
    if args.binaries:
        check_flags(objects, args.binaries, problems)
    for p in problems:
        print(f"validate: {p}", file=sys.stderr)
    print(f"validate: {len(objects)} objects, {len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
