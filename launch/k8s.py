"""k8s jobs: a manifest for ``kubectl apply -f``, one pod per node, torchrun in each with a c10d
rendezvous on the first pod.

- ``pytorchjob``: Kubeflow's training operator (Master + Worker replicas); the operator gives every
  pod MASTER_ADDR and MASTER_PORT.
- ``indexed-job``: a batch/v1 Job in Indexed mode with a headless Service, needing no operator;
  pod i is reachable as NAME-i.NAME, so the rendezvous is at NAME-0.NAME.

Failed pods are restarted (``k8s.backoff_limit``) and the run resumes from its newest checkpoint
on the shared volume (``k8s.runs_claim``). Variables that look like secrets are read from the
Secret NAME-env instead of being written into the manifest.
"""

from __future__ import annotations

import math
import re

import yaml

from launch.cluster import ClusterConfig, split_secrets
from launch.job import Job, shell_join
from pretrain.config import ConfigError


class _Plain(yaml.SafeDumper):
    """Writes a repeated pod template out in full (no &anchors), as kubectl users expect to read it."""

    def ignore_aliases(self, data):
        return True


def k8s_name(name: str) -> str:
    """A DNS-1035 label from the run name."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    out = out if out and out[0].isalpha() else f"run-{out}"
    return out[:50].rstrip("-")


def render(job: Job, cluster: ClusterConfig) -> tuple[str, list[str]]:
    """(the manifest as YAML, notes for the user)."""
    k = cluster.k8s
    if not k.image:
        raise ConfigError("cluster.k8s.image is required: the container image with this project installed "
                          "(e.g. cluster.k8s.image=registry.example.com/pretrain:latest)")  # fmt: skip
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*", k.image):
        raise ConfigError(f"cluster.k8s.image={k.image!r}: an image reference has letters, digits and . _ / : @ + - "
                          "only (e.g. registry.example.com/pretrain:latest)")  # fmt: skip
    name = k8s_name(job.cfg.name)
    python = cluster.python or "python"
    if k.kind == "pytorchjob":
        endpoint = '"$MASTER_ADDR:$MASTER_PORT"'
    else:
        endpoint = f'"{cluster.master_addr or f"{name}-0.{name}"}:{cluster.master_port}"'
    torchrun = job.torchrun(python, cluster.nodes, cluster.nproc_per_node, endpoint, rdzv_id=name,
                            max_restarts=cluster.max_restarts, grace_s=cluster.grace_s)  # fmt: skip
    plain, secret = split_secrets(cluster.environment())
    env = [{"name": n, "value": v} for n, v in sorted(plain.items())]
    env += [{"name": n, "valueFrom": {"secretKeyRef": {"name": f"{name}-env", "key": n}}} for n in secret]
    resources: dict = {"limits": {}, "requests": {}}
    if cluster.gpus is not False:
        resources["limits"][k.gpu_resource] = cluster.nproc_per_node
    for what in ("cpu", "memory"):
        if getattr(k, what):
            resources["requests"][what] = getattr(k, what)
    resources = {key: value for key, value in resources.items() if value}
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k.shm_size}}]
    if k.runs_claim:
        mounts.append({"name": "runs", "mountPath": f"{k.workdir.rstrip('/')}/{job.cfg.output_dir}"})
        volumes.append({"name": "runs", "persistentVolumeClaim": {"claimName": k.runs_claim}})
    container = {
        "name": "pytorch",  # the training operator looks for this name
        "image": k.image,
        "workingDir": k.workdir,
        "command": ["bash", "-c", f"exec {shell_join(torchrun, {endpoint})}"],
        "env": env,
        "ports": [{"name": "pytorchjob-port", "containerPort": cluster.master_port}],
        "volumeMounts": mounts,
        **({"resources": resources} if resources else {}),
    }
    # deleted or preempted, the pod's ranks save a checkpoint of their step (torchrun allows grace_s)
    pod_spec: dict = {"containers": [container], "volumes": volumes,
                      "terminationGracePeriodSeconds": math.ceil(cluster.grace_s) + 30}  # fmt: skip
    if k.node_selector:
        pod_spec["nodeSelector"] = dict(k.node_selector)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": job.program}
    meta = {"name": name, "namespace": k.namespace, "labels": labels}
    notes = []
    if secret:
        literals = " ".join(f"--from-literal={n}=..." for n in secret)
        notes.append(f"create the secret first: kubectl -n {k.namespace} create secret generic {name}-env {literals}")
    if not k.runs_claim:
        notes.append("no cluster.k8s.runs_claim: checkpoints live in the pods and are lost with them")

    if k.kind == "pytorchjob":

        def replicas(count: int) -> dict:
            return {"replicas": count, "restartPolicy": "OnFailure",
                    "template": {"metadata": {"labels": labels}, "spec": pod_spec}}  # fmt: skip

        specs = {"Master": replicas(1)}
        if cluster.nodes > 1:
            specs["Worker"] = replicas(cluster.nodes - 1)
        docs = [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": meta,
                 "spec": {"runPolicy": {"backoffLimit": k.backoff_limit, "cleanPodPolicy": "None"},
                          "pytorchReplicaSpecs": specs}}]  # fmt: skip
    else:
        pod_spec = {**pod_spec, "subdomain": name, "restartPolicy": "OnFailure"}
        service = {"apiVersion": "v1", "kind": "Service", "metadata": meta,
                   "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"job-name": name},
                            "ports": [{"name": "rendezvous", "port": cluster.master_port}]}}  # fmt: skip
        batch_job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
                     "spec": {"completionMode": "Indexed", "completions": cluster.nodes, "parallelism": cluster.nodes,
                              "backoffLimit": k.backoff_limit,
                              "template": {"metadata": {"labels": labels}, "spec": pod_spec}}}  # fmt: skip
        docs = [service, batch_job]
    text = "".join("---\n" + yaml.dump(d, Dumper=_Plain, sort_keys=False) for d in docs)
    return f"# {job.program} {job.config} {' '.join(job.overrides)}".rstrip() + "\n" + text, notes
