//! The plugin: the ttrpc service NRI calls and the connect/register/
//! reconnect loop (needs NRI's generated protocol: feature `nri`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ttrpc::r#async::{Client, Server, TtrpcContext};

use super::agent::{adjustment, pod_info, Agent};
use super::policy::NriPolicy;
use super::proto::{api, api_ttrpc};
use super::{mux, reload, valid_index, NriError, NriOptions};
use crate::ops::Ctdev;

/// Events the plugin subscribes to (bit `1 << (event - 1)`).
fn event_mask() -> i32 {
    [
        api::Event::CREATE_CONTAINER,
        api::Event::START_CONTAINER,
        api::Event::STOP_CONTAINER,
        api::Event::REMOVE_CONTAINER,
    ]
    .iter()
    .map(|e| 1i32 << ((*e as i32) - 1))
    .fold(0, |a, b| a | b)
}

struct Service {
    agent: Arc<Agent>,
}

fn rpc_error(msg: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::FAILED_PRECONDITION, msg))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ttrpc::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ttrpc::Error::Others(format!("ctdev plugin task failed: {e}")))
}

#[async_trait]
impl api_ttrpc::Plugin for Service {
    async fn configure(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConfigureRequest,
    ) -> ttrpc::Result<api::ConfigureResponse> {
        tracing::info!(
            runtime = %req.runtime_name,
            version = %req.runtime_version,
            "configured by the runtime"
        );
        let mut resp = api::ConfigureResponse::new();
        resp.events = event_mask();
        Ok(resp)
    }

    async fn synchronize(
        &self,
        _ctx: &TtrpcContext,
        req: api::SynchronizeRequest,
    ) -> ttrpc::Result<api::SynchronizeResponse> {
        tracing::info!(
            pods = req.pods.len(),
            containers = req.containers.len(),
            "synchronizing"
        );
        let agent = self.agent.clone();
        blocking(move || agent.synchronize(&req.pods, &req.containers)).await?;
        Ok(api::SynchronizeResponse::new())
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: api::Empty) -> ttrpc::Result<api::Empty> {
        tracing::info!("the runtime is shutting the plugin down");
        Ok(api::Empty::new())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        let (Some(pod), Some(c)) = (req.pod.as_ref(), req.container.as_ref()) else {
            return Ok(api::CreateContainerResponse::new());
        };
        let info = pod_info(pod, c);
        let id = c.id.clone();
        let agent = self.agent.clone();
        let plan = blocking(move || agent.create(&info, &id))
            .await?
            .map_err(rpc_error)?;
        let mut resp = api::CreateContainerResponse::new();
        resp.adjust = protobuf::MessageField::some(adjustment(&plan));
        Ok(resp)
    }

    async fn stop_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::StopContainerRequest,
    ) -> ttrpc::Result<api::StopContainerResponse> {
        if let Some(c) = req.container.as_ref() {
            tracing::debug!(container = %c.id, "stopped");
        }
        Ok(api::StopContainerResponse::new())
    }

    async fn state_change(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateChangeEvent,
    ) -> ttrpc::Result<api::Empty> {
        let (Some(pod), Some(c)) = (req.pod.as_ref(), req.container.as_ref()) else {
            return Ok(api::Empty::new());
        };
        let agent = self.agent.clone();
        match req.event.enum_value() {
            Ok(api::Event::START_CONTAINER) => {
                let info = pod_info(pod, c);
                let (uid, id) = (pod.uid.clone(), c.id.clone());
                let path = c
                    .linux
                    .as_ref()
                    .map(|l| l.cgroups_path.clone())
                    .unwrap_or_default();
                blocking(move || match agent.start(&info, &uid, &id, &path) {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        agent.record(&info, &uid, &id, &path);
                        Ok(())
                    }
                    Err(e) => Err(e),
                })
                .await?
                .map_err(rpc_error)?;
            }
            Ok(api::Event::REMOVE_CONTAINER) => {
                let id = c.id.clone();
                blocking(move || agent.remove(&id)).await?;
            }
            _ => {}
        }
        Ok(api::Empty::new())
    }
}

/// Runs the plugin with the policy read from `policy_path`, and watches
/// that file: a change is reloaded without a restart ([`reload`]). This is
/// what `ctdev nri` and `ctdev daemon` with an `[nri]` section run.
pub async fn serve(
    ctdev: Ctdev,
    policy: NriPolicy,
    policy_path: PathBuf,
    options: NriOptions,
) -> Result<(), NriError> {
    let agent = Arc::new(Agent::new(ctdev, policy));
    let watcher = tokio::spawn({
        let agent = agent.clone();
        async move {
            if let Err(e) = reload::watch(agent, policy_path).await {
                tracing::error!("{e}: policy changes need a restart of the plugin");
            }
        }
    });
    // Before the first container: no start pays for loading and verifying
    // the program.
    let _ = blocking({
        let agent = agent.clone();
        move || agent.preload()
    })
    .await;
    let res = run(agent, options).await;
    watcher.abort();
    res
}

/// Runs the plugin until the socket closes for good (or forever with
/// `reconnect`).
pub async fn run(agent: Arc<Agent>, options: NriOptions) -> Result<(), NriError> {
    if !valid_index(&options.index) {
        return Err(NriError::BadIndex(options.index));
    }
    loop {
        match session(agent.clone(), &options).await {
            Ok(reason) => {
                tracing::warn!(socket = %options.socket.display(), "NRI connection closed: {reason}")
            }
            Err(message) => {
                if options.reconnect.is_none() {
                    return Err(NriError::Connect {
                        socket: options.socket.clone(),
                        message,
                    });
                }
                tracing::warn!(socket = %options.socket.display(), "{message}");
            }
        }
        match options.reconnect {
            Some(every) => tokio::time::sleep(every).await,
            None => return Ok(()),
        }
    }
}

/// One connection: register, serve until the socket closes.
async fn session(agent: Arc<Agent>, options: &NriOptions) -> Result<String, String> {
    let stream = tokio::net::UnixStream::connect(&options.socket)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let muxed = mux::split(stream);
    let service = api_ttrpc::create_plugin(Arc::new(Service { agent }));
    let plugin_conn = muxed.plugin;
    let listener = ttrpc::r#async::transport::Listener::new(futures_util::stream::iter([Ok::<
        _,
        std::io::Error,
    >(
        plugin_conn,
    )]));
    let mut server = Server::new()
        .register_service(service)
        .add_listener(listener);
    server
        .start()
        .await
        .map_err(|e| format!("cannot serve the plugin service: {e}"))?;
    let client = api_ttrpc::RuntimeClient::new(Client::new(
        ttrpc::r#async::transport::Socket::new(muxed.runtime),
    ));
    let mut req = api::RegisterPluginRequest::new();
    req.plugin_name = options.name.clone();
    req.plugin_idx = options.index.clone();
    client
        .register_plugin(ttrpc::context::with_duration(Duration::from_secs(30)), &req)
        .await
        .map_err(|e| format!("RegisterPlugin failed: {e}"))?;
    tracing::info!(socket = %options.socket.display(), name = %options.name, index = %options.index, "registered");
    let reason = match muxed.closed.await {
        Ok(e) => e.to_string(),
        Err(_) => "closed".to_string(),
    };
    // The listener (one in-memory connection) has ended already, so
    // ttrpc's shutdown would find no accept loop to stop: just drop it.
    drop(server);
    Ok(reason)
}
