//! The HTTP API, served on its listener from the first step of the start until the last
//! step of the stop.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::HttpSettings;
use crate::tls::http_tls_config;

/// The HTTP API's server, running.
pub struct Http {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Http {
    /// Serves the API on `listener`, over TLS when the settings say so.
    pub fn start(
        listener: TcpListener,
        state: Arc<AppState>,
        settings: &HttpSettings,
    ) -> anyhow::Result<Self> {
        let tls = match &settings.tls {
            Some((cert, key)) => Some(http_tls_config(cert, key)?),
            None => None,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(api::server::serve(
            listener,
            api::router(state),
            tls,
            stop.clone(),
        ));
        Ok(Self { stop, task })
    }

    /// Stops taking connections and waits for the requests in flight.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("HTTP server")
    }
}
