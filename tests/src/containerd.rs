//! A real containerd 1.7 with NRI, private to one test, driven through the
//! real CRI API (the kubelet's gRPC interface, via the `k8s-cri` client).
//!
//! containerd runs from the Debian package that `cargo xtask setup` unpacks
//! (`/opt/ctdev-deps/containerd`, or `CTDEV_CONTAINERD_DIR`), inside a
//! private mount namespace with cgroup2 on `/sys/fs/cgroup`
//! ([`crate::runtimes::in_cgroup2_ns`]), with its own root, state, sockets,
//! runc state root and NRI socket under one temp directory. Two quirks of
//! this machine are handled as MACHINE.md says: `restrict_oom_score_adj`
//! (no CAP_SYS_RESOURCE), and a runc wrapper that drops the resources of
//! controllers the cgroup2 hierarchy lacks (cpu, memory, pids) from the
//! bundle. Pods are host-network, in the test's own parent cgroup, from a
//! busybox image built here as an OCI layout and imported with `ctr`.
//!
//! Drop stops and removes every pod, kills containerd and its shims and
//! removes the directory, also when the test panics.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::runtimes::{in_cgroup2_ns, require_tool, run_ok};
use crate::unique;

/// The image every pod and container uses.
pub const IMAGE: &str = "docker.io/library/ctdev-busybox:1";

/// Where the unpacked containerd package is.
pub fn containerd_dir() -> PathBuf {
    std::env::var_os("CTDEV_CONTAINERD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/ctdev-deps/containerd"))
}

fn bin(name: &str) -> PathBuf {
    let p = containerd_dir().join("usr/bin").join(name);
    assert!(
        p.is_file(),
        "{} is missing: `cargo xtask setup` unpacks containerd 1.7 (Debian trixie's package) there; \
         these tests need it and do not skip",
        p.display()
    );
    p
}

/// The runc wrapper: drops resources of controllers cgroup2 lacks here.
const RUNC_WRAPPER: &str = r#"#!/bin/sh
# Written by the ctdev tests. CRI always sets cpu (and may set memory, pids)
# resources; this cgroup2 hierarchy lacks those controllers, so drop them
# from the bundle before runc sees them.
bundle=
prev=
for a in "$@"; do
  if [ "$prev" = "--bundle" ] || [ "$prev" = "-b" ]; then bundle=$a; fi
  prev=$a
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  ctrl=" $(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null) "
  filter=.
  for c in cpu memory pids; do
    case "$ctrl" in *" $c "*) ;; *) filter="$filter | del(.linux.resources.$c)" ;; esac
  done
  jq "$filter" "$bundle/config.json" > "$bundle/config.json.ctdev" &&
    mv "$bundle/config.json.ctdev" "$bundle/config.json"
fi
exec runc "$@"
"#;

/// One containerd instance.
pub struct Containerd {
    /// Everything of this instance lives here.
    pub dir: PathBuf,
    /// The gRPC (CRI) socket.
    pub sock: PathBuf,
    /// The NRI socket.
    pub nri_sock: PathBuf,
    /// runc's state root of the CRI namespace (for ctdev's takeover).
    pub runc_root: PathBuf,
    /// The cgroup parent of the pods (inside the hierarchy, `/name`).
    pub cgroup_parent: String,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    pods: Vec<String>,
}

impl Containerd {
    /// Starts a containerd whose pods go under `cgroup_parent` (a cgroup the
    /// test owns, `/name` inside the hierarchy).
    pub fn start(name: &str, cgroup_parent: &str) -> Containerd {
        require_tool("jq", "jq");
        require_tool("runc", "runc");
        let dir = std::env::temp_dir().join(unique(name));
        fs::create_dir_all(&dir).expect("containerd dir");
        let sock = dir.join("containerd.sock");
        let nri_sock = dir.join("nri.sock");
        let wrapper = dir.join("runc-wrapper");
        fs::write(&wrapper, RUNC_WRAPPER).expect("write runc wrapper");
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod wrapper");
        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.nri.v1.nri"]
  disable = false
  disable_connections = false
  socket_path = "{d}/nri.sock"
  plugin_path = "{d}/nri-plugins"
  plugin_config_path = "{d}/nri-conf"
  plugin_registration_timeout = "5s"
  plugin_request_timeout = "10s"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{d}/runc-wrapper"
        Root = "{d}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
"#
        );
        fs::write(dir.join("config.toml"), config).expect("write containerd config");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut c = Containerd {
            runc_root: dir.join("runc/k8s.io"),
            dir,
            sock,
            nri_sock,
            cgroup_parent: cgroup_parent.to_string(),
            child: None,
            rt,
            pods: Vec::new(),
        };
        c.launch();
        c.import_image();
        c
    }

    fn launch(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .expect("containerd log");
        let path = format!(
            "{}:{}",
            containerd_dir().join("usr/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = in_cgroup2_ns(&[
            bin("containerd").as_os_str(),
            "--config".as_ref(),
            self.dir.join("config.toml").as_os_str(),
        ]);
        cmd.env("PATH", path);
        self.child = Some(crate::spawn_logged(&mut cmd, log, "containerd"));
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if self.sock.exists() && self.nri_sock.exists() && self.version().is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("containerd exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < end,
                "containerd did not come up in 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Kills containerd (not its shims: containers keep running) and
    /// starts it again with the same state.
    pub fn restart(&mut self) {
        self.stop_daemon();
        let _ = fs::remove_file(&self.nri_sock);
        self.launch();
    }

    fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn channel(&self) -> Result<Channel, String> {
        let sock = self.sock.clone();
        self.rt.block_on(async move {
            Endpoint::try_from("http://[::]:50051")
                .map_err(|e| e.to_string())?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let sock = sock.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(sock).await?,
                        ))
                    }
                }))
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().expect("connect to containerd's CRI socket"))
    }

    fn version(&self) -> Result<String, String> {
        let channel = self.channel()?;
        self.rt.block_on(async move {
            RuntimeServiceClient::new(channel)
                .version(cri::VersionRequest::default())
                .await
                .map(|r| r.into_inner().runtime_version)
                .map_err(|e| e.to_string())
        })
    }

    /// Builds the busybox OCI layout and imports it into `k8s.io`.
    fn import_image(&self) {
        let layout = self.dir.join("image");
        let rootfs = self.dir.join("image-rootfs");
        for d in ["bin", "dev", "proc", "sys", "tmp", "etc"] {
            fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("copy busybox (busybox-static)");
        for applet in [
            "sh", "sleep", "cat", "ls", "mknod", "stat", "echo", "true", "test",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("applet");
        }
        fs::create_dir_all(layout.join("blobs/sha256")).expect("layout dir");
        let layer_tmp = self.dir.join("layer.tar");
        run_ok(
            Command::new("tar")
                .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
                .arg(&rootfs)
                .arg("-cf")
                .arg(&layer_tmp)
                .arg("."),
            "tar the image layer",
        );
        let blob = |bytes: &[u8]| -> (String, usize) {
            let tmp = layout.join("blob.tmp");
            fs::write(&tmp, bytes).expect("blob");
            let out = run_ok(Command::new("sha256sum").arg(&tmp), "sha256sum");
            let hex = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .expect("digest")
                .to_string();
            fs::rename(&tmp, layout.join("blobs/sha256").join(&hex)).expect("blob rename");
            (format!("sha256:{hex}"), bytes.len())
        };
        let (layer, layer_size) = blob(&fs::read(&layer_tmp).expect("layer"));
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/sleep"], "Cmd": ["2147483647"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer]},
        });
        let (config, config_size) = blob(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}],
        });
        let (manifest, manifest_size) = blob(manifest.to_string().as_bytes());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest, "size": manifest_size,
                "annotations": {"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "1"},
            }],
        });
        fs::write(layout.join("index.json"), index.to_string()).expect("index.json");
        fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("oci-layout");
        let tar = self.dir.join("image.tar");
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(&layout)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
            "tar the OCI layout",
        );
        run_ok(
            Command::new(bin("ctr"))
                .arg("-a")
                .arg(&self.sock)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(&tar),
            "ctr images import",
        );
    }

    fn pod_config(
        &self,
        namespace: &str,
        name: &str,
        annotations: &[(&str, &str)],
    ) -> cri::PodSandboxConfig {
        let host = || cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            ..Default::default()
        };
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: namespace.into(),
                attempt: 0,
            }),
            log_directory: self.dir.join("logs").join(name).display().to_string(),
            labels: [("app".to_string(), name.to_string())].into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(host()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Runs a pod sandbox; its ID.
    pub fn run_pod(&mut self, namespace: &str, name: &str, annotations: &[(&str, &str)]) -> Pod {
        let config = self.pod_config(namespace, name, annotations);
        fs::create_dir_all(&config.log_directory).expect("pod log directory");
        let mut client = self.client();
        let id = self
            .rt
            .block_on(client.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .unwrap_or_else(|e| panic!("RunPodSandbox {namespace}/{name}: {e}\n{}", self.log()))
            .into_inner()
            .pod_sandbox_id;
        self.pods.push(id.clone());
        Pod { id, config }
    }

    /// Creates and starts a container running `sleep` in `pod`; its ID, or
    /// the CRI error (of create or of start).
    pub fn run_container(&self, pod: &Pod, name: &str) -> Result<String, String> {
        let mut client = self.client();
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/bin/sleep".into(), "2147483647".into()],
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .rt
            .block_on(client.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }))
            .map_err(|e| format!("CreateContainer: {}", e.message()))?
            .into_inner()
            .container_id;
        self.rt
            .block_on(client.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            }))
            .map_err(|e| format!("StartContainer {id}: {}", e.message()))?;
        Ok(id)
    }

    /// Stops (at once) and removes a container.
    pub fn remove_container(&self, container: &str) {
        let mut client = self.client();
        let _ = self
            .rt
            .block_on(client.stop_container(cri::StopContainerRequest {
                container_id: container.into(),
                timeout: 0,
            }));
        let _ = self
            .rt
            .block_on(client.remove_container(cri::RemoveContainerRequest {
                container_id: container.into(),
            }));
    }

    /// Runs `cmd` in a container: (exit code, stdout + stderr).
    pub fn exec(&self, container: &str, cmd: &[&str]) -> (i32, String) {
        let mut client = self.client();
        let r = self
            .rt
            .block_on(client.exec_sync(cri::ExecSyncRequest {
                container_id: container.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 20,
            }))
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {container}: {e}"))
            .into_inner();
        (
            r.exit_code,
            format!(
                "{}{}",
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            ),
        )
    }

    /// Opens `path` read-write inside the container: Ok, or the error text.
    pub fn open_rw(&self, container: &str, path: &str) -> Result<(), String> {
        let (code, out) = self.exec(container, &["sh", "-c", &format!(": <> {path}")]);
        if code == 0 {
            Ok(())
        } else {
            Err(out)
        }
    }

    /// The cgroup path (inside the hierarchy) of a container.
    pub fn cgroup_of(&self, container: &str) -> String {
        format!("{}/{container}", self.cgroup_parent)
    }

    /// Stops and removes a pod.
    pub fn remove_pod(&mut self, pod: &Pod) {
        let mut client = self.client();
        let _ = self
            .rt
            .block_on(client.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }));
        let _ = self
            .rt
            .block_on(client.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }));
        self.pods.retain(|p| p != &pod.id);
    }

    /// Pids of this instance's shims.
    fn shims(&self) -> Vec<i32> {
        let needle = self.sock.display().to_string();
        let mut out = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("containerd-shim") && cmd.contains(&needle) {
                out.push(pid);
            }
        }
        out
    }
}

/// A pod sandbox.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Its ID.
    pub id: String,
    /// The config it was created with (containers need it).
    pub config: cri::PodSandboxConfig,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            for id in self.pods.clone() {
                let Ok(channel) = self.channel() else { break };
                let mut client = RuntimeServiceClient::new(channel);
                let _ = self.rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(15), async {
                        let _ = client
                            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                                pod_sandbox_id: id.clone(),
                            })
                            .await;
                        let _ = client
                            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                                pod_sandbox_id: id.clone(),
                            })
                            .await;
                    })
                    .await
                });
            }
        }
        self.stop_daemon();
        crate::runtimes::remove_cgroup_tree(
            &crate::cgroup_mount().join(self.cgroup_parent.trim_start_matches('/')),
        );
        for pid in self.shims() {
            // SAFETY: kill(2) of a shim of this test's containerd.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(200));
        if std::env::var_os("CTDEV_KEEP_CONTAINERD").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits up to `timeout` for `f` to hold.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `ctdev nri` plugin process, killed on drop.
pub struct NriPlugin {
    child: Child,
    /// Its log file.
    pub log: PathBuf,
}

impl NriPlugin {
    /// Starts `ctdev --pin-root PIN nri --socket SOCK --config POLICY --state-dir STATE`.
    pub fn start(pin_root: &Path, nri_sock: &Path, policy: &Path, state_dir: &Path) -> NriPlugin {
        // One log per plugin process (a restarted plugin gets a new one).
        let log = state_dir.with_extension(format!("{}.log", crate::unique("nri")));
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("plugin log");
        let child = Command::new(crate::ctdev_bin())
            .arg("--pin-root")
            .arg(pin_root)
            .args(["-vv", "nri", "--reconnect-interval", "0.2", "--socket"])
            .arg(nri_sock)
            .arg("--config")
            .arg(policy)
            .arg("--state-dir")
            .arg(state_dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log fd"))
            .stderr(f)
            .spawn()
            .expect("start ctdev nri");
        NriPlugin { child, log }
    }

    /// The plugin's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `n` lines saying it registered.
    #[track_caller]
    pub fn wait_registered(&self, n: usize) {
        assert!(
            eventually(Duration::from_secs(20), || self
                .log()
                .matches("registered")
                .count()
                >= n),
            "ctdev nri did not register ({n}):\n{}",
            self.log()
        );
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NriPlugin {
    fn drop(&mut self) {
        self.kill();
    }
}
