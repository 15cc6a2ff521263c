#!/usr/bin/env python3
"""`make check-deploy`: the deployment files pass their validators.

- deploy/kubernetes/*.yaml against the Kubernetes schemas (kubernetes-validate --strict, pinned);
- the StatefulSet's member command line (args and ETCD_* env) equals compose.yaml's for each
  member once the pod DNS names are replaced by the compose service names, so the flags
  make test-deploy runs are the ones Kubernetes would run;
- compose.yaml through `docker-compose config`;
- deploy/systemd/metastore.service through `systemd-analyze verify`, which must print nothing
  (it exits 0 on unknown keys and bad values, only warning), with ExecStart pointed at a real
  binary given as the first argument (verify requires the program to exist).

  deploy/check-manifests.py METASTORE_BINARY
"""
import glob
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBERNETES_VALIDATE = "1.37.0"
results = []


def check(name, problem):
    """Records one check: `problem` is None when it passed, else what is wrong."""
    results.append((name, problem))
    print(("ok: " if problem is None else "FAILED: ") + name + ("" if problem is None else "\n  " + problem))


def kubernetes_schemas():
    files = sorted(glob.glob(os.path.join(ROOT, "deploy/kubernetes/*.yaml")))
    try:
        out = subprocess.run(["kubernetes-validate", "--version"], capture_output=True, text=True)
    except FileNotFoundError:
        return f"kubernetes-validate is not installed: pip install kubernetes-validate=={KUBERNETES_VALIDATE}"
    if KUBERNETES_VALIDATE not in out.stdout + out.stderr:
        return f"kubernetes-validate {out.stdout.strip()} is not the pinned {KUBERNETES_VALIDATE}"
    run = subprocess.run(["kubernetes-validate", "--strict", "--quiet", *files], capture_output=True, text=True)
    if run.returncode != 0:
        return (run.stdout + run.stderr).strip()
    return None


def statefulset_command_lines():
    """Each member's (args, ETCD_* env) from the StatefulSet, with pod DNS names resolved to
    the compose service names."""
    docs = yaml.safe_load_all(open(os.path.join(ROOT, "deploy/kubernetes/metastore.yaml")))
    sts = next(d for d in docs if d and d["kind"] == "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    members = {}
    for i in range(sts["spec"]["replicas"]):
        pod = f"{sts['metadata']['name']}-{i}"

        def resolve(text):
            text = text.replace(f".{sts['spec']['serviceName']}.$(POD_NAMESPACE).svc", "")
            return text.replace("$(POD_NAME)", pod)

        env = {e["name"]: resolve(e["value"]) for e in container["env"] if "value" in e}
        members[pod] = ([resolve(a) for a in container["args"]], env)
    return members


def compose_command_lines():
    compose = yaml.safe_load(open(os.path.join(ROOT, "deploy/compose.yaml")))
    return {
        name: (svc["command"], {k: str(v) for k, v in svc["environment"].items()})
        for name, svc in compose["services"].items()
    }


def same_command_line():
    k8s, compose = statefulset_command_lines(), compose_command_lines()
    if sorted(k8s) != sorted(compose):
        return f"members differ: StatefulSet {sorted(k8s)}, compose {sorted(compose)}"
    wrong = []
    for member in k8s:
        if k8s[member] != compose[member]:
            wrong.append(f"{member}: StatefulSet {k8s[member]}\n    compose {compose[member]}")
    return "\n  ".join(wrong) or None


def compose_config():
    env = dict(os.environ, METASTORE_IMAGE="metastore:local")
    run = subprocess.run(["docker-compose", "-f", os.path.join(ROOT, "deploy/compose.yaml"), "config", "-q"],
                         capture_output=True, text=True, env=env)
    return None if run.returncode == 0 else (run.stdout + run.stderr).strip()


def systemd_unit(binary):
    unit = open(os.path.join(ROOT, "deploy/systemd/metastore.service")).read()
    if not re.search(r"^ExecStart=/usr/local/bin/metastore$", unit, re.M):
        return "ExecStart is not /usr/local/bin/metastore"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "metastore.service")
        with open(path, "w") as f:
            f.write(unit.replace("ExecStart=/usr/local/bin/metastore", f"ExecStart={os.path.abspath(binary)}"))
        run = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True)
    said = (run.stdout + run.stderr).strip()
    if run.returncode != 0 or said:
        return f"systemd-analyze verify exited {run.returncode}: {said}"
    return None


def main():
    if len(sys.argv) != 2 or not os.access(sys.argv[1], os.X_OK):
        sys.exit("usage: check-manifests.py METASTORE_BINARY")
    check("kubernetes manifests pass the Kubernetes schemas (strict)", kubernetes_schemas())
    check("the StatefulSet runs the command line compose.yaml runs", same_command_line())
    check("compose.yaml passes docker-compose config", compose_config())
    check("the systemd unit passes systemd-analyze verify", systemd_unit(sys.argv[1]))
    failed = sum(1 for _, p in results if p is not None)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
