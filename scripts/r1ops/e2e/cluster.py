"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok (fake nodes whose pods turn Running and Ready) and the Argo Rollouts controller
running out of cluster. Every binary comes from `r1ops.e2e.build`.

    with Cluster(toolchain, workdir) as cluster:
        cluster.kubectl.run("get", "nodes")
"""

from __future__ import annotations

import secrets
import ssl
import urllib.request
from pathlib import Path

from rich.console import Console

from r1ops.e2e.build import Toolchain
from r1ops.e2e.certs import make_pki
from r1ops.e2e.kubectl import Kubectl
from r1ops.e2e.procs import Proc
from r1ops.processes import free_port

console = Console(stderr=True)
HOST = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"

NODE_TEMPLATE = """
apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations:
    {annotation}: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: {name}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
    topology.kubernetes.io/zone: e2e-{zone}
    # What the GPU operator's feature discovery labels an H100 node with (prod selects on it).
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3
status:
  capacity: &cap {{cpu: "64", memory: 512Gi, pods: "110", nvidia.com/gpu: "8", ephemeral-storage: 1Ti}}
  allocatable: *cap
"""


class Cluster:
    def __init__(self, toolchain: Toolchain, workdir: Path, nodes: int = 2) -> None:
        self.tc = toolchain
        self.dir = workdir
        self.nodes = nodes
        self.procs: list[Proc] = []
        self.token = secrets.token_hex(16)
        self.kubeconfig = workdir / "kubeconfig"
        self.kubectl = Kubectl(toolchain.bin("kubectl"), self.kubeconfig)
        self.apiserver_port = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with console.status("e2e control plane: etcd ..."):
            self._etcd()
        with console.status("e2e control plane: kube-apiserver ..."):
            self._apiserver()
        with console.status("e2e control plane: CRDs ..."):
            self.install_crds()
        with console.status("e2e control plane: controller-manager, scheduler, kwok, rollouts ..."):
            self._controller_manager()
            self._scheduler()
            self._kwok()
            self._rollouts_controller()
        console.print(f"e2e control plane up: {self.server} (logs in {self.dir})")

    def stop(self) -> None:
        # Controllers first, then the API server, then etcd: nothing logs errors about a dead peer.
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def _spawn(self, name: str, *args: str) -> Proc:
        proc = Proc(name, [self.tc.bin(name), *args], self.dir / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.apiserver_port}"

    def _get(self, url: str, token: bool = False) -> bool:
        req = urllib.request.Request(url)
        ctx = None
        if token:
            req.add_header("Authorization", f"Bearer {self.token}")
            ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        with urllib.request.urlopen(req, timeout=3, context=ctx) as resp:
            return resp.status == 200

    # -- components ------------------------------------------------------------------------------

    def _etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://{HOST}:{client}"
        proc = self._spawn(
            "etcd",
            "--name=e2e",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://{HOST}:{peer}",
            f"--initial-advertise-peer-urls=http://{HOST}:{peer}",
            f"--initial-cluster=e2e=http://{HOST}:{peer}",
            "--listen-metrics-urls=",
            # A throw-away cluster on a shared disk: durability would only cost fsync latency.
            "--unsafe-no-fsync",
            "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        )
        proc.wait_until(lambda: self._get(f"{self.etcd_url}/health"), 60, "etcd /health")

    def _apiserver(self) -> None:
        self.pki = make_pki(self.dir / "pki")
        self.apiserver_port = free_port()
        tokens = self.dir / "tokens.csv"
        tokens.write_text(f'{self.token},e2e-admin,e2e-admin,"system:masters"\n')
        tokens.chmod(0o600)
        self._write_kubeconfig()
        proc = self._spawn(
            "kube-apiserver",
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={HOST}",
            f"--advertise-address={HOST}",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={self.pki.server_crt}",
            f"--tls-private-key-file={self.pki.server_key}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={self.pki.sa_pub}",
            f"--service-account-signing-key-file={self.pki.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Fewer moving parts on a two-core machine; none of these change what the tests check.
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--endpoint-reconciler-type=none",
            "--v=1",
        )
        proc.wait_until(lambda: self._get(f"{self.server}/readyz", token=True), 120, "kube-apiserver /readyz")

    def _write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {{server: "{self.server}", certificate-authority: "{self.pki.ca_crt}"}}
users:
- name: e2e-admin
  user: {{token: "{self.token}"}}
contexts:
- name: e2e
  context: {{cluster: e2e, user: e2e-admin}}
current-context: e2e
"""
        )
        self.kubeconfig.chmod(0o600)

    def install_crds(self) -> None:
        files = [f"--filename={crd}" for crd in self.tc.crds]
        self.kubectl.run("apply", "--server-side", *files, timeout=300)
        self.kubectl.run("wait", "--for=condition=Established", "crd", "--all", "--timeout=120s")

    def _controller_manager(self) -> None:
        self._spawn(
            "kube-controller-manager",
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            # No HTTPS endpoint: nothing scrapes it, and it would need delegated auth.
            "--secure-port=0",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca_crt}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--v=1",
        )
        # The serviceaccount controller creating `default` shows the controllers are running.
        self.kubectl.wait_for(
            lambda: self.kubectl.run("get", "sa", "default", "-n", "default", check=False),
            90,
            "kube-controller-manager created the default ServiceAccount",
        )

    def _scheduler(self) -> None:
        self._spawn(
            "kube-scheduler", f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--secure-port=0"
        )

    def _kwok(self) -> None:
        configs = [f"--config={p}" for p in self.tc.kwok_stages]
        self._spawn(
            "kwok",
            f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            f"--cidr={POD_CIDR}",
            f"--node-ip={HOST}",
            f"--server-address={HOST}:{free_port()}",
            "--node-lease-duration-seconds=40",
            *configs,
        )
        nodes = "\n---".join(
            NODE_TEMPLATE.format(name=f"kwok-node-{i}", zone="ab"[i % 2], annotation=FAKE_NODE_ANNOTATION)
            for i in range(self.nodes)
        )
        self.kubectl.run("apply", "-f", "-", stdin=nodes)
        self.kubectl.run("wait", "--for=condition=Ready", "node", "--all", "--timeout=90s")

    def _rollouts_controller(self) -> None:
        healthz = free_port()
        proc = self._spawn(
            "rollouts-controller",
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            f"--healthzPort={healthz}",
            f"--metricsPort={free_port()}",
            "--loglevel=info",
        )
        proc.wait_until(
            lambda: self._get(f"http://{HOST}:{healthz}/healthz"), 60, "rollouts-controller /healthz"
        )

    def check_alive(self) -> None:
        """Raise with the log of any component that died (a test's failure is then explained)."""
        for proc in self.procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} died:\n{proc.log_tail()}")
