"""A JSON Schema of KubeRay's RayService resource (apiVersion ray.io/v1), for the levels of the
resource that deploy/kuberay/rayservice.yaml uses.

Written here, from the facts of KubeRay's CRD and Go types (field names, types, required fields,
enums) as of ray-project/kuberay commit feeaf72facab4881ba2b179248bb67315634e229:
`ray-operator/config/crd/bases/ray.io_rayservices.yaml`, `ray-operator/apis/ray/v1/
rayservice_types.go` and `raycluster_types.go`; the few rules marked "the operator" are from
`ray-operator/controllers/ray/utils/validation.go`. The CRD is not a dependency: no package
ships it and the tests cannot download it.

`additionalProperties: False` marks an object whose properties the CRD lists in full. The API
server drops or, under kubectl's default `--validate=strict`, refuses a field such an object does
not declare, so a misspelled `workerGroupSpec` or `rayStartParam` would otherwise vanish
without a word. Objects this manifest does not use are typed as objects and left open. The few
checks that go beyond the CRD say so where they are made.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

# A Kubernetes resource.Quantity written as a string: a decimal number, then a binary (Ki..Ei),
# decimal (n, u, m, k, M..E) or exponent suffix. "8Gi" and "0.5" pass, "8GB" does not.
_DECIMAL = r"([0-9]+(\.[0-9]*)?|\.[0-9]+)"
QUANTITY_PATTERN = rf"^[+-]?{_DECIMAL}(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?{_DECIMAL})?$"


def string() -> Schema:
    return {"type": "string"}


def boolean() -> Schema:
    return {"type": "boolean"}


def enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


def int32(minimum: int = -(2**31)) -> Schema:
    # The CRD's integers are `format: int32`.
    return {"type": "integer", "minimum": minimum, "maximum": 2**31 - 1}


def quantity() -> Schema:
    # The CRD's `x-kubernetes-int-or-string` quantities: an integer, or a string in quantity form.
    return {"type": ["integer", "string"], "pattern": QUANTITY_PATTERN}


def string_map() -> Schema:
    # Go `map[string]string`: KubeRay refuses `num-cpus: 2`; it must be `num-cpus: "2"`.
    return {"type": "object", "additionalProperties": string()}


def array(items: Schema, min_items: int = 0) -> Schema:
    schema: Schema = {"type": "array", "items": items}
    if min_items:
        schema["minItems"] = min_items
    return schema


def closed(properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    """An object with exactly these properties (the CRD lists all of them)."""
    unknown = set(required) - set(properties)
    assert not unknown, f"required properties {sorted(unknown)} are not among the properties"
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


def open_object(properties: dict[str, Schema] | None = None, required: tuple[str, ...] = ()) -> Schema:
    """An object whose other properties are not checked here (unused by our manifest, or a
    Kubernetes type the CRD embeds in full)."""
    schema: Schema = {"type": "object", "additionalProperties": True}
    if properties:
        schema["properties"] = properties
    if required:
        schema["required"] = list(required)
    return schema


def names(*fields: str) -> dict[str, Schema]:
    """Properties whose values are not checked here, only their names."""
    return {field: {} for field in fields}


# --- core/v1 pieces, with the Kubernetes field names, for the parts of a pod we set -------------

def env_var() -> Schema:
    key_ref = closed({"name": string(), "key": string(), "optional": boolean()}, required=("key",))
    value_from = closed(
        {
            "secretKeyRef": key_ref,
            "configMapKeyRef": key_ref,
            **names("fieldRef", "fileKeyRef", "resourceFieldRef"),
        }
    )
    schema = closed({"name": string(), "value": string(), "valueFrom": value_from}, required=("name",))
    # Beyond the CRD: the API server's pod validation refuses `value` and `valueFrom` together.
    schema["not"] = {"required": ["value", "valueFrom"]}
    return schema


def volume_mount() -> Schema:
    return closed(
        {
            "name": string(),
            "mountPath": string(),
            "readOnly": boolean(),
            "subPath": string(),
            "subPathExpr": string(),
            "mountPropagation": string(),
            "recursiveReadOnly": string(),
        },
        required=("mountPath", "name"),
    )


def resource_requirements() -> Schema:
    quantities = {"type": "object", "additionalProperties": quantity()}
    return closed({"limits": quantities, "requests": quantities, "claims": array(open_object())})


def container() -> Schema:
    port = closed(
        {
            "containerPort": int32(),
            "name": string(),
            "protocol": string(),
            "hostIP": string(),
            "hostPort": int32(),
        },
        required=("containerPort",),
    )
    return closed(
        {
            "name": string(),
            "image": string(),
            "imagePullPolicy": string(),
            "command": array(string()),
            "args": array(string()),
            "workingDir": string(),
            "env": array(env_var()),
            "envFrom": array(open_object()),
            "ports": array(port),
            "resources": resource_requirements(),
            "volumeMounts": array(volume_mount()),
            **names(
                "lifecycle", "livenessProbe", "readinessProbe", "startupProbe", "resizePolicy",
                "restartPolicy", "restartPolicyRules", "securityContext", "stdin", "stdinOnce",
                "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices",
            ),
        },
        # Beyond the CRD: core/v1 leaves `image` to "higher level config management"; nothing
        # in this deployment supplies one, so a container without it is a mistake here.
        required=("name", "image"),
    )


def volume() -> Schema:
    claim = closed({"claimName": string(), "readOnly": boolean()}, required=("claimName",))
    # A volume has some thirty source types; only the one we use is checked.
    return open_object({"name": string(), "persistentVolumeClaim": claim}, required=("name",))


def pod_template() -> Schema:
    # The CRD embeds the whole core/v1 PodTemplateSpec. Its metadata is the short form the CRD
    # lists; of the pod spec's fields only the ones we set are checked, the rest stay open.
    metadata = closed(
        {
            "name": string(),
            "namespace": string(),
            "labels": string_map(),
            "annotations": string_map(),
            "finalizers": array(string()),
        }
    )
    spec = open_object(
        # KubeRay's operator refuses a group without a container, hence minItems.
        {"containers": array(container(), min_items=1), "volumes": array(volume())},
        required=("containers",),
    )
    return closed({"metadata": metadata, "spec": spec})


# --- KubeRay types ------------------------------------------------------------------------------

def autoscaler_options() -> Schema:
    return closed(
        {
            "resources": resource_requirements(),
            "image": string(),
            "imagePullPolicy": string(),
            "securityContext": open_object(),
            "idleTimeoutSeconds": int32(),
            "upscalingMode": enum("Default", "Aggressive", "Conservative"),
            "version": enum("v1", "v2"),
            "env": array(env_var()),
            "envFrom": array(open_object()),
            "volumeMounts": array(volume_mount()),
            "command": array(string()),
            "args": array(string()),
        }
    )


def head_group_spec() -> Schema:
    return closed(
        {
            "template": pod_template(),
            "headService": open_object(),
            "enableIngress": boolean(),
            "ingressOptions": open_object(),
            "resources": string_map(),
            "labels": string_map(),
            "rayStartParams": string_map(),
            # Beyond the CRD (a plain string there): the core/v1 ServiceType values, which the
            # head Service KubeRay creates must have.
            "serviceType": enum("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"),
        },
        required=("template",),
    )


def worker_group_spec() -> Schema:
    # The operator refuses negative replica counts.
    replicas = int32(minimum=0)
    return closed(
        {
            "suspend": boolean(),
            "groupName": string(),
            "replicas": replicas,
            "minReplicas": replicas,
            "maxReplicas": replicas,
            "idleTimeoutSeconds": int32(),
            "priority": int32(),
            "resources": string_map(),
            "labels": string_map(),
            "rayStartParams": string_map(),
            "template": pod_template(),
            "scaleStrategy": closed({"workersToDelete": array(string())}),
            "numOfHosts": int32(),
        },
        # The CRD's required list. The API server would default a missing minReplicas to 0 and
        # maxReplicas to the int32 maximum; requiring them keeps a group's bounds written out.
        required=("groupName", "maxReplicas", "minReplicas", "template"),
    )


def managed_by() -> Schema:
    # The CRD's validation rule allows these two controllers.
    return enum("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue")


def ray_cluster_spec() -> Schema:
    return closed(
        {
            "upgradeStrategy": closed({"type": enum("Recreate", "None")}),
            "authOptions": open_object(),
            "suspend": boolean(),
            "managedBy": managed_by(),
            "autoscalerOptions": autoscaler_options(),
            "headServiceAnnotations": string_map(),
            "enableInTreeAutoscaling": boolean(),
            "gcsFaultToleranceOptions": open_object(),
            "historyServerOptions": open_object(),
            "networkPolicy": open_object(),
            "tlsOptions": open_object(),
            "headGroupSpec": head_group_spec(),
            "rayVersion": string(),
            "workerGroupSpecs": array(worker_group_spec()),
        },
        required=("headGroupSpec",),
    )


def ray_service_upgrade_strategy() -> Schema:
    cluster_upgrade_options = closed(
        {
            "maxSurgePercent": int32(),
            "stepSizePercent": int32(),
            "intervalSeconds": int32(),
            "gatewayClassName": string(),
        },
        required=("gatewayClassName", "intervalSeconds", "stepSizePercent"),
    )
    return closed(
        {
            # A plain string in the CRD; these are the values the operator accepts.
            "type": enum("NewClusterWithIncrementalUpgrade", "NewCluster", "None"),
            "clusterUpgradeOptions": cluster_upgrade_options,
        }
    )


def ray_service_spec() -> Schema:
    return closed(
        {
            "rayClusterDeletionDelaySeconds": int32(minimum=0),
            "serviceUnhealthySecondThreshold": int32(),
            "deploymentUnhealthySecondThreshold": int32(),
            "serveService": open_object(),
            "upgradeStrategy": ray_service_upgrade_strategy(),
            "managedBy": managed_by(),
            "serveConfigV2": string(),
            "rayClusterConfig": ray_cluster_spec(),
            "excludeHeadPodFromServeSvc": boolean(),
            "suspend": boolean(),
        },
        required=("rayClusterConfig",),
    )


def ray_service() -> Schema:
    # ObjectMeta is validated by the API server, not the CRD; only what a manifest needs is
    # checked. Requiring apiVersion, kind, metadata.name and spec goes beyond the CRD: kubectl
    # needs the first three, and a RayService without a spec has no cluster.
    metadata = open_object(
        {"name": string(), "namespace": string(), "labels": string_map(), "annotations": string_map()},
        required=("name",),
    )
    schema = closed(
        {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayService"},
            "metadata": metadata,
            "spec": ray_service_spec(),
            "status": open_object(),
        },
        required=("apiVersion", "kind", "metadata", "spec"),
    )
    dialect = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "RayService (ray.io/v1)"}
    return {**dialect, **schema}


RAYSERVICE_SCHEMA: Schema = ray_service()
