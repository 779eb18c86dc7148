"""Monitoring: prometheus-operator (CRDs and operator from its Go module), a Prometheus that
scrapes the Neuraxis operator and the model servers, alert rules on their metrics, and Grafana
with the Neuraxis dashboards (built in code: infra/grafana.py) provisioned from ConfigMaps.

Metric names are the ones `neuraxis.operator.metrics` and `neuraxis.workloads.serve.metrics`
export; a unit test checks every expression here against them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi

from neuraxis.infra import images
from neuraxis.infra.grafana import dashboards
from neuraxis.infra.kube import kube_objects
from neuraxis.infra.prometheus_operator import PrometheusOperatorBundle, in_namespace
from neuraxis.operator.manifests import LABELS as OPERATOR_LABELS

TOKEN = "neuraxis:infra:Monitoring"
# Prometheus picks up exactly the monitors and rules carrying this label.
SELECT_LABEL = {"neuraxis.dev/monitoring": "true"}
PART_OF = {"app.kubernetes.io/part-of": "neuraxis"}
GRAFANA_PORT = 3000
NON_ROOT = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
LOCKED_DOWN = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
PSI_THRESHOLD = 0.2  # neuraxis.workloads.drift.PSI_THRESHOLD (tests/infra pins the two)


@dataclass(frozen=True)
class MonitoringArgs:
    bundle: PrometheusOperatorBundle
    namespace: str = "monitoring"
    operator_namespace: str = "neuraxis-system"
    retention: str = "15d"


class Monitoring(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        namespace = {"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": ns, "labels": PART_OF}}  # fmt: skip
        base = kube_objects([namespace, *args.bundle.crds], child)
        after = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=base))
        kube_objects(
            [
                *in_namespace(args.bundle.operator, ns),
                *prometheus_manifests(ns, args.retention),
                *monitor_manifests(ns, args.operator_namespace),
                alert_rules(ns),
                *grafana_manifests(ns),
            ],
            after,
        )
        self.grafana_url = f"http://grafana.{ns}.svc:{GRAFANA_PORT}"
        self.prometheus_url = f"http://prometheus-operated.{ns}.svc:9090"
        self.crd_names = [c["metadata"]["name"] for c in args.bundle.crds]
        self.register_outputs(
            {
                "grafanaUrl": self.grafana_url,
                "prometheusUrl": self.prometheus_url,
                "prometheusOperatorVersion": args.bundle.version,
                "crds": self.crd_names,
            }
        )


def prometheus_manifests(ns: str, retention: str) -> list[dict[str, Any]]:
    """A Prometheus (run by prometheus-operator) with the RBAC to discover its targets."""
    meta = {"name": "prometheus", "namespace": ns, "labels": PART_OF}
    rules = [
        {"apiGroups": [""], "resources": ["nodes", "services", "endpoints", "pods"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["get", "list", "watch"]},
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
    ]  # fmt: skip
    everywhere: dict[str, Any] = {}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": f"{ns}-prometheus", "labels": PART_OF},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{ns}-prometheus", "labels": PART_OF},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{ns}-prometheus",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": ns}],
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "Prometheus",
            "metadata": meta,
            "spec": {
                "version": images.PROMETHEUS_VERSION,
                "image": images.PROMETHEUS,
                "replicas": 1,
                "retention": retention,
                "serviceAccountName": "prometheus",
                "securityContext": {**NON_ROOT, "runAsUser": 65534, "fsGroup": 65534},
                "resources": {
                    "requests": {"cpu": "200m", "memory": "512Mi"},
                    "limits": {"cpu": "1", "memory": "2Gi"},
                },
                "serviceMonitorSelector": {"matchLabels": SELECT_LABEL},
                "serviceMonitorNamespaceSelector": everywhere,
                "podMonitorSelector": {"matchLabels": SELECT_LABEL},
                "podMonitorNamespaceSelector": everywhere,
                "ruleSelector": {"matchLabels": SELECT_LABEL},
                "ruleNamespaceSelector": everywhere,
            },
        },
    ]


def monitor_manifests(ns: str, operator_namespace: str) -> list[dict[str, Any]]:
    """PodMonitors: the operator's /metrics, and every model server in every namespace."""
    labels = {**PART_OF, **SELECT_LABEL}
    return [
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": {"name": "neuraxis-operator", "namespace": ns, "labels": labels},
            "spec": {
                "namespaceSelector": {"matchNames": [operator_namespace]},
                "selector": {"matchLabels": OPERATOR_LABELS},
                "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": {"name": "neuraxis-serving", "namespace": ns, "labels": labels},
            "spec": {
                "namespaceSelector": {"any": True},
                "selector": {
                    "matchLabels": {
                        "app.kubernetes.io/managed-by": "neuraxis",
                        "app.kubernetes.io/component": "predictor",
                    }
                },
                "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
            },
        },
    ]


def alert_rules(ns: str) -> dict[str, Any]:
    """Alerts on reconcile errors, failed runs, quality-gate failures, serving latency and errors,
    and feature drift."""

    def rule(alert: str, expr: str, duration: str, severity: str, summary: str) -> dict[str, Any]:
        return {
            "alert": alert,
            "expr": expr,
            "for": duration,
            "labels": {"severity": severity},
            "annotations": {"summary": summary},
        }

    latency_p99 = (
        "histogram_quantile(0.99, sum by (le, namespace, pod) "
        '(rate(neuraxis_serve_request_duration_seconds_bucket{route=~"/v.*"}[5m])))'
    )
    rules = [
        rule(
            "NeuraxisReconcileErrors",
            "sum by (kind, reason) (increase(neuraxis_reconcile_errors_total[10m])) > 0",
            "5m", "warning",
            "{{ $labels.kind }} reconciles fail with {{ $labels.reason }}",
        ),
        rule(
            "NeuraxisRunsFailed",
            'sum by (kind) (neuraxis_resources{kind=~"TrainingJob|ModelVersion|EdgeDeployment",'
            'phase=~"Failed|Rejected"}) > 0',
            "1m", "warning",
            "{{ $value }} {{ $labels.kind }} resources failed (their Jobs failed or were rejected)",
        ),
        rule(
            "NeuraxisDatasetQualityFailed",
            'sum(neuraxis_resources{kind="Dataset",phase="Failed"}) > 0',
            "1m", "warning",
            "{{ $value }} Datasets failed (ETL error or quality gate; see status.conditions)",
        ),
        rule(
            "NeuraxisServingLatencyHigh",
            f"{latency_p99} > 0.5",
            "10m", "critical",
            "p99 prediction latency of {{ $labels.namespace }}/{{ $labels.pod }} is "
            "{{ $value | humanizeDuration }}",
        ),
        rule(
            "NeuraxisServingErrors",
            'sum by (namespace, pod) (rate(neuraxis_serve_requests_total{code=~"5.."}[5m])) '
            "/ sum by (namespace, pod) (rate(neuraxis_serve_requests_total[5m])) > 0.05",
            "10m", "critical",
            "more than 5% of requests to {{ $labels.namespace }}/{{ $labels.pod }} fail",
        ),
        rule(
            # PSI > 0.2 is the usual "significant shift" (workloads/drift.py PSI_THRESHOLD); the
            # server exports it once its window of served rows is full. 15m: a sustained shift,
            # not one odd batch.
            "NeuraxisFeatureDrift",
            f"max by (namespace, model, feature) (neuraxis_feature_drift) > {PSI_THRESHOLD}",
            "15m", "warning",
            "feature {{ $labels.feature }} of {{ $labels.namespace }}/{{ $labels.model }} "
            "drifted from its training profile (PSI {{ $value | printf \"%.2f\" }} > 0.2)",
        ),
    ]  # fmt: skip
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "neuraxis", "namespace": ns, "labels": {**PART_OF, **SELECT_LABEL}},
        "spec": {"groups": [{"name": "neuraxis", "rules": rules}]},
    }


def grafana_manifests(ns: str) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": "grafana", **PART_OF}
    meta = {"namespace": ns, "labels": labels}
    datasource = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": "prometheus",
                "type": "prometheus",
                "access": "proxy",
                "url": f"http://prometheus-operated.{ns}.svc:9090",
                "isDefault": True,
            }
        ],
    }
    provider = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "neuraxis",
                "folder": "Neuraxis",
                "type": "file",
                "options": {"path": "/var/lib/grafana/dashboards"},
            }
        ],
    }
    container = {
        "name": "grafana",
        "image": images.GRAFANA,
        "ports": [{"name": "http", "containerPort": GRAFANA_PORT}],
        "env": [{"name": "GF_AUTH_ANONYMOUS_ENABLED", "value": "false"}],
        "readinessProbe": {"httpGet": {"path": "/api/health", "port": "http"}},
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "500m", "memory": "512Mi"},
        },
        "securityContext": {**LOCKED_DOWN, "runAsNonRoot": True},
        "volumeMounts": [
            {"name": "datasources", "mountPath": "/etc/grafana/provisioning/datasources"},
            {"name": "providers", "mountPath": "/etc/grafana/provisioning/dashboards"},
            {"name": "dashboards", "mountPath": "/var/lib/grafana/dashboards"},
            {"name": "data", "mountPath": "/var/lib/grafana"},
        ],
    }
    return [
        _config_map("grafana-datasources", meta, {"prometheus.yaml": json.dumps(datasource)}),
        _config_map("grafana-dashboard-providers", meta, {"neuraxis.yaml": json.dumps(provider)}),
        _config_map("grafana-dashboards", meta, dashboards()),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "grafana", **meta},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": {**NON_ROOT, "runAsUser": 472, "fsGroup": 472},
                        "containers": [container],
                        "volumes": [
                            {"name": "datasources", "configMap": {"name": "grafana-datasources"}},
                            {
                                "name": "providers",
                                "configMap": {"name": "grafana-dashboard-providers"},
                            },
                            {"name": "dashboards", "configMap": {"name": "grafana-dashboards"}},
                            {"name": "data", "emptyDir": {}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "grafana", **meta},
            "spec": {
                "selector": labels,
                "ports": [{"name": "http", "port": GRAFANA_PORT, "targetPort": "http"}],
            },
        },
    ]


def _config_map(name: str, meta: dict[str, Any], data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **meta},
            "data": data}  # fmt: skip
