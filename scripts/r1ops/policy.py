"""The repository's rules for rendered manifests, beyond what the API schemas can say.

Each check takes every object of one rendered tree and returns problems as `Kind/ns/name: what`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

SERVING_KINDS = {"Rollout", "Deployment", "StatefulSet", "DaemonSet"}
WORKLOAD_KINDS = SERVING_KINDS | {"Job", "CronJob"}
GPU = "nvidia.com/gpu"
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def _ref(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind', '?')}/{ns}{meta.get('name', '?')}"


def pod_templates(objects: list[dict]) -> Iterator[tuple[str, dict, dict]]:
    """(where, the object, pod template) for workloads and the Jobs of analysis `job` metrics."""
    for obj in objects:
        kind, spec = obj.get("kind"), obj.get("spec") or {}
        if kind in WORKLOAD_KINDS:
            template = spec.get("template")
            if kind == "CronJob":
                template = spec.get("jobTemplate", {}).get("spec", {}).get("template")
            if template:
                yield _ref(obj), obj, template
        elif kind in ("AnalysisTemplate", "ClusterAnalysisTemplate"):
            for metric in spec.get("metrics", []):
                job = (metric.get("provider") or {}).get("job")
                if job:
                    yield f"{_ref(obj)} metric {metric.get('name')}", obj, job["spec"]["template"]


def _containers(template: dict) -> list[dict]:
    spec = template.get("spec") or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def image_pinned(image: str) -> str | None:
    """Why an image reference is not pinned, or None when it is (a tag other than latest, or a digest)."""
    if _DIGEST.search(image):
        return None
    name = image.rsplit("/", 1)[-1]
    if ":" not in name:
        return f"image {image} has no tag or digest"
    if name.rsplit(":", 1)[1] == "latest":
        return f"image {image} uses :latest"
    return None


def check_images(objects: list[dict]) -> list[str]:
    problems = []
    for where, _, template in pod_templates(objects):
        for c in _containers(template):
            if why := image_pinned(str(c.get("image", ""))):
                problems.append(f"{where}: container {c.get('name')}: {why}")
    return problems


def check_security(objects: list[dict]) -> list[str]:
    """Pod Security 'restricted' plus no service account token: what base/ promises."""
    problems = []
    for where, _, template in pod_templates(objects):
        spec = template.get("spec") or {}
        pod_sc = spec.get("securityContext") or {}
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(host):
                problems.append(f"{where}: {host} is set")
        for volume in spec.get("volumes") or []:
            if "hostPath" in volume:
                problems.append(f"{where}: volume {volume.get('name')} is a hostPath")
        for c in _containers(template):
            sc = c.get("securityContext") or {}
            name = f"{where}: container {c.get('name')}"
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                problems.append(f"{name}: runAsNonRoot is not true")
            seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{name}: seccompProfile is not RuntimeDefault")
            if sc.get("privileged"):
                problems.append(f"{name}: privileged")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}: readOnlyRootFilesystem is not true")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{name}: capabilities do not drop ALL")
    return problems


def check_resources(objects: list[dict]) -> list[str]:
    problems = []
    for where, _, template in pod_templates(objects):
        for c in _containers(template):
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                missing = [r for r in ("cpu", "memory") if r not in (res.get(part) or {})]
                if missing:
                    problems.append(f"{where}: container {c.get('name')}: no {part} for {', '.join(missing)}")
    return problems


def check_probes(objects: list[dict]) -> list[str]:
    """Serving containers need startup, readiness and liveness probes (model loads take minutes)."""
    problems = []
    for where, obj, template in pod_templates(objects):
        if obj.get("kind") not in SERVING_KINDS:
            continue
        for c in (template.get("spec") or {}).get("containers") or []:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if not c.get(probe):
                    problems.append(f"{where}: container {c.get('name')}: no {probe}")
    return problems


def _container_settings(objects: list[dict], container: dict) -> dict[str, str]:
    """The variables a container gets from ConfigMaps (envFrom) and literal env."""
    config_maps = {
        o["metadata"]["name"]: o.get("data") or {} for o in objects if o.get("kind") == "ConfigMap"
    }
    values: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if name := (source.get("configMapRef") or {}).get("name"):
            values.update(config_maps.get(name, {}))
    values.update({e["name"]: e["value"] for e in container.get("env") or [] if "value" in e})
    return values


def _settings(objects: list[dict], template: dict) -> dict[str, str]:
    """The R1SERVE_* values a pod template's containers get, merged."""
    values: dict[str, str] = {}
    for c in (template.get("spec") or {}).get("containers") or []:
        values.update(_container_settings(objects, c))
    return values


def check_gpu(objects: list[dict]) -> list[str]:
    """A server told to use CUDA must request a GPU, and a CPU server must not hold one."""
    problems = []
    for where, obj, template in pod_templates(objects):
        if obj.get("kind") not in SERVING_KINDS:
            continue
        device = _settings(objects, template).get("R1SERVE_DEVICE", "auto")
        for c in (template.get("spec") or {}).get("containers") or []:
            gpus = str(((c.get("resources") or {}).get("limits") or {}).get(GPU, "0"))
            if device.startswith("cuda") and gpus in ("0", ""):
                problems.append(
                    f"{where}: container {c.get('name')}: R1SERVE_DEVICE={device} but no {GPU} limit"
                )
            if device == "cpu" and gpus not in ("0", ""):
                problems.append(
                    f"{where}: container {c.get('name')}: R1SERVE_DEVICE=cpu but holds {gpus} GPU"
                )
    return problems


def check_kernel_cache(objects: list[dict]) -> list[str]:
    """A CUDA server compiles Triton kernels at start-up into TRITON_CACHE_DIR: with a read-only root
    filesystem it must lie on a writable volume, and on a ReadWriteMany PersistentVolumeClaim, else
    every new pod compiles them all again (the 1.5B on an H200: ready in 12.8 s with them, 16.5-17.2
    s without)."""
    claims = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "PersistentVolumeClaim"}
    problems = []
    for where, obj, template in pod_templates(objects):
        if obj.get("kind") not in SERVING_KINDS:
            continue
        spec = template.get("spec") or {}
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        for c in spec.get("containers") or []:
            settings = _container_settings(objects, c)
            if not settings.get("R1SERVE_DEVICE", "").startswith("cuda"):
                continue
            name = f"{where}: container {c.get('name')}"
            cache = settings.get("TRITON_CACHE_DIR")
            if not cache:
                if not any(e.get("name") == "TRITON_CACHE_DIR" for e in c.get("env") or []):  # valueFrom
                    problems.append(f"{name}: R1SERVE_DEVICE is cuda but TRITON_CACHE_DIR is not set")
                continue
            mounts = [
                m for m in c.get("volumeMounts") or []
                if f"{cache.rstrip('/')}/".startswith(f"{m.get('mountPath', '').rstrip('/')}/")
            ]  # fmt: skip
            mount = max(mounts, key=lambda m: len(m["mountPath"]), default=None)
            claim = (volumes.get((mount or {}).get("name")) or {}).get("persistentVolumeClaim")
            if mount is None or mount.get("readOnly") or (claim or {}).get("readOnly"):
                problems.append(f"{name}: TRITON_CACHE_DIR {cache} is not on a writable volume")
            elif claim is None:
                problems.append(
                    f"{name}: TRITON_CACHE_DIR {cache} is on volume {mount.get('name')}, not a "
                    "PersistentVolumeClaim: every new pod compiles its kernels again"
                )
            elif (pvc := claims.get(claim.get("claimName"))) and "ReadWriteMany" not in pvc["spec"].get(
                "accessModes", []
            ):
                problems.append(
                    f"{name}: kernel cache claim {claim.get('claimName')} is not ReadWriteMany: pods on "
                    "other nodes cannot mount it"
                )
    return problems


def check_drain(objects: list[dict]) -> list[str]:
    """The grace period must cover the preStop pause plus the server's drain timeout."""
    problems = []
    for where, obj, template in pod_templates(objects):
        if obj.get("kind") not in SERVING_KINDS:
            continue
        spec = template.get("spec") or {}
        grace = spec.get("terminationGracePeriodSeconds", 30)
        drain = float(_settings(objects, template).get("R1SERVE_DRAIN_TIMEOUT", 30))
        for c in spec.get("containers") or []:
            pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
            if grace < pre_stop + drain:
                problems.append(
                    f"{where}: terminationGracePeriodSeconds {grace} < preStop {pre_stop}s + drain {drain:g}s"
                )
    return problems


def _strategy_services(rollout: dict) -> dict[str, str]:
    strategy = (rollout.get("spec") or {}).get("strategy") or {}
    fields = {"canary": ("stableService", "canaryService"), "blueGreen": ("activeService", "previewService")}
    return {
        f"{kind}.{field}": strategy[kind][field]
        for kind, names in fields.items()
        if kind in strategy
        for field in names
        if strategy[kind].get(field)
    }


def check_rollout_services(objects: list[dict]) -> list[str]:
    """A strategy is set, its Services exist, select the Rollout's pods and reach a named port."""
    services = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "Service"}
    problems = []
    for obj in objects:
        if obj.get("kind") != "Rollout":
            continue
        spec = obj.get("spec") or {}
        strategy = spec.get("strategy") or {}
        if not ({"canary", "blueGreen"} & set(strategy)):
            problems.append(f"{_ref(obj)}: no canary or blueGreen strategy")
            continue
        if "blueGreen" in strategy and not _strategy_services(obj).get("blueGreen.activeService"):
            problems.append(f"{_ref(obj)}: blueGreen without activeService")
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        ports = {
            p.get("name")
            for c in (spec.get("template") or {}).get("spec", {}).get("containers") or []
            for p in c.get("ports") or []
        }
        for field, name in _strategy_services(obj).items():
            svc = services.get(name)
            if svc is None:
                problems.append(f"{_ref(obj)}: {field} {name} is not rendered")
                continue
            selector = (svc.get("spec") or {}).get("selector") or {}
            if not selector or any(labels.get(k) != v for k, v in selector.items()):
                problems.append(f"{_ref(obj)}: Service {name} selector {selector} does not match the pods")
            for port in (svc.get("spec") or {}).get("ports") or []:
                target = port.get("targetPort")
                if isinstance(target, str) and target not in ports:
                    problems.append(
                        f"{_ref(obj)}: Service {name} targets port {target!r}, not a container port"
                    )
    return problems


def check_traffic_routing(objects: list[dict]) -> list[str]:
    """The Gateway API plugin's HTTPRoute exists in the Rollout's namespace and routes to its Services."""
    routes = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "HTTPRoute"}
    problems = []
    for obj in objects:
        if obj.get("kind") != "Rollout":
            continue
        canary = ((obj.get("spec") or {}).get("strategy") or {}).get("canary") or {}
        plugin = ((canary.get("trafficRouting") or {}).get("plugins") or {}).get("argoproj-labs/gatewayAPI")
        if not plugin:
            continue
        namespace = (obj.get("metadata") or {}).get("namespace")
        if plugin.get("namespace") != namespace:
            problems.append(
                f"{_ref(obj)}: gatewayAPI plugin namespace {plugin.get('namespace')!r} is not {namespace!r}"
            )
        route = routes.get(plugin.get("httpRoute", ""))
        if route is None:
            problems.append(f"{_ref(obj)}: HTTPRoute {plugin.get('httpRoute')} is not rendered")
            continue
        backends = {
            b.get("name") for r in route["spec"].get("rules") or [] for b in r.get("backendRefs") or []
        }
        for service in (canary.get("stableService"), canary.get("canaryService")):
            if service not in backends:
                problems.append(
                    f"{_ref(obj)}: HTTPRoute {route['metadata']['name']} has no backend {service}"
                )
    return problems


def _selects(selector: dict, labels: dict) -> bool:
    match = (selector or {}).get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def check_network_and_disruption(objects: list[dict]) -> list[str]:
    """Serving pods: an ingress NetworkPolicy opens only their container ports, Prometheus'
    namespace among its sources, and a PodDisruptionBudget covers them."""
    problems = []
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    budgets = [o for o in objects if o.get("kind") == "PodDisruptionBudget"]
    for where, obj, template in pod_templates(objects):
        if obj.get("kind") not in SERVING_KINDS:
            continue
        labels = (template.get("metadata") or {}).get("labels") or {}
        declared = [p for c in template["spec"]["containers"] for p in c.get("ports") or []]
        ports = {p.get("containerPort") for p in declared} | {p.get("name") for p in declared}
        mine = [p for p in policies if _selects(p["spec"].get("podSelector"), labels)]
        if not any("Ingress" in p["spec"].get("policyTypes", []) for p in mine):
            problems.append(f"{where}: no ingress NetworkPolicy selects its pods")
        for pol in mine:
            for rule in pol["spec"].get("ingress") or []:
                opened = {port.get("port") for port in rule.get("ports") or []}
                if not opened or opened - ports:
                    problems.append(
                        f"{where}: NetworkPolicy {pol['metadata']['name']} opens {opened or 'all ports'}"
                    )
                namespaces = {
                    (peer.get("namespaceSelector") or {})
                    .get("matchLabels", {})
                    .get("kubernetes.io/metadata.name")
                    for peer in rule.get("from") or []
                }
                if "monitoring" not in namespaces:
                    problems.append(f"{where}: NetworkPolicy {pol['metadata']['name']} shuts out Prometheus")
        if not any(_selects(b["spec"].get("selector"), labels) for b in budgets):
            problems.append(f"{where}: no PodDisruptionBudget covers its pods")
    return problems


def analysis_references(rollout: dict) -> Iterator[tuple[str, dict]]:
    """(where, analysis block) for every analysis a Rollout's strategy runs."""
    strategy = (rollout.get("spec") or {}).get("strategy") or {}
    canary, blue_green = strategy.get("canary") or {}, strategy.get("blueGreen") or {}
    if canary.get("analysis"):
        yield "canary.analysis", canary["analysis"]
    for i, step in enumerate(canary.get("steps") or []):
        if step.get("analysis"):
            yield f"canary.steps[{i}].analysis", step["analysis"]
    for field in ("prePromotionAnalysis", "postPromotionAnalysis"):
        if blue_green.get(field):
            yield f"blueGreen.{field}", blue_green[field]


def check_analysis_args(objects: list[dict]) -> list[str]:
    """Every template an analysis names is rendered, each of its args without a default is given, and
    templates run together do not give one arg different defaults (Argo Rollouts refuses to merge
    them: "Argument specified multiple times with different values")."""
    templates = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "AnalysisTemplate"}
    problems = []
    for obj in objects:
        if obj.get("kind") != "Rollout":
            continue
        for where, analysis in analysis_references(obj):
            given = {a["name"] for a in analysis.get("args") or []}
            defaults: dict[str, tuple[str, str]] = {}
            for ref in analysis.get("templates") or []:
                name = ref.get("templateName")
                if ref.get("clusterScope"):
                    continue
                template = templates.get(name)
                if template is None:
                    problems.append(f"{_ref(obj)}: {where}: AnalysisTemplate {name} is not rendered")
                    continue
                for arg in (template.get("spec") or {}).get("args") or []:
                    if "value" not in arg and "valueFrom" not in arg and arg["name"] not in given:
                        problems.append(f"{_ref(obj)}: {where}: {name} needs arg {arg['name']!r}")
                    if "value" in arg:
                        other, value = defaults.setdefault(arg["name"], (name, arg["value"]))
                        if value != arg["value"]:
                            problems.append(
                                f"{_ref(obj)}: {where}: arg {arg['name']!r} defaults to {value!r} in {other}"
                                f" but {arg['value']!r} in {name}"
                            )
    return problems


def _secret_env(container: dict, name: str) -> tuple[str, str] | None:
    """(Secret, key) a container's variable `name` comes from, or None."""
    for e in container.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if e.get("name") == name and ref:
            return ref.get("name"), ref.get("key")
    return None


def _is_load_test(container: dict) -> bool:
    return container.get("image", "").rsplit("/", 1)[-1].split(":")[0].split("@")[0] == "r1-loadtest"


def check_load_test_key(objects: list[dict]) -> list[str]:
    """Once the server's API key Secret exists every /v1 call without it is a 401, so a load test
    (the blue-green pre-promotion gate among them) must read the same Secret, or every release fails."""
    keys = {
        key
        for _, obj, template in pod_templates(objects)
        if obj.get("kind") in SERVING_KINDS
        for c in _containers(template)
        if (key := _secret_env(c, "R1SERVE_API_KEY"))
    }
    problems = []
    for where, _, template in pod_templates(objects):
        for c in filter(_is_load_test, _containers(template)):
            got = _secret_env(c, "LOCUST_API_KEY")
            for secret, key in sorted(keys - {got}):
                problems.append(
                    f"{where}: container {c.get('name')}: LOCUST_API_KEY does not come from Secret"
                    f" {secret} key {key}, which the server's R1SERVE_API_KEY reads"
                )
    return problems


def _kept(obj: dict) -> bool:
    """Argo CD leaves it in the cluster when its Application is deleted with cascade."""
    options = ((obj.get("metadata") or {}).get("annotations") or {}).get(
        "argocd.argoproj.io/sync-options", ""
    )
    return "Delete=false" in options.replace(" ", "").split(",")


def check_kept_namespaces(objects: list[dict]) -> list[str]:
    """A namespace deleted takes everything in it: what Delete=false keeps (the model volume) needs
    its rendered Namespace kept as well."""
    namespaces = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "Namespace"}
    problems = []
    for obj in objects:
        ns = (obj.get("metadata") or {}).get("namespace")
        if _kept(obj) and ns in namespaces and not _kept(namespaces[ns]):
            problems.append(
                f"{_ref(obj)}: Delete=false, but Namespace {ns} has no Delete=false and takes it along"
            )
    return problems


def check_pod_monitor(objects: list[dict]) -> list[str]:
    """Analysis tells canary from stable by rollouts_pod_template_hash: the scrape must keep it."""
    monitors = [o for o in objects if o.get("kind") == "PodMonitor"]
    problems = []
    for obj in objects:
        if obj.get("kind") != "Rollout":
            continue
        labels = (((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
        keeps = False
        for mon in monitors:
            if _selects((mon.get("spec") or {}).get("selector"), labels):
                for endpoint in (mon.get("spec") or {}).get("podMetricsEndpoints") or []:
                    keeps |= any(
                        r.get("targetLabel") == "rollouts_pod_template_hash"
                        and "__meta_kubernetes_pod_label_rollouts_pod_template_hash"
                        in (r.get("sourceLabels") or [])
                        for r in endpoint.get("relabelings") or []
                    )
        if not keeps:
            problems.append(f"{_ref(obj)}: no PodMonitor keeps rollouts_pod_template_hash for its pods")
    return problems


CHECKS: tuple[Callable[[list[dict]], list[str]], ...] = (
    check_images,
    check_security,
    check_resources,
    check_probes,
    check_gpu,
    check_kernel_cache,
    check_drain,
    check_rollout_services,
    check_traffic_routing,
    check_network_and_disruption,
    check_analysis_args,
    check_pod_monitor,
    check_load_test_key,
    check_kept_namespaces,
)


def policy_problems(objects: list[dict]) -> list[str]:
    return [problem for check in CHECKS for problem in check(objects)]
