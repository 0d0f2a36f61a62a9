//! `workerd run`: binds `workerd.listen` and runs the daemon until SIGTERM or Ctrl-C.

use shared::config::Config;
use shared::runtime::exit::Exit;
use shared::runtime::shutdown::{self, Shutdown};

pub async fn run(config: Config) -> Exit {
    let addr = config.workerd.listen;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %addr, error = %e, "cannot bind workerd.listen");
            return super::failed(&format!("cannot bind workerd.listen ({addr}): "), e);
        }
    };
    match crate::daemon::run(config, listener, Shutdown::on(shutdown::signal())).await {
        Ok(()) => Exit::Ok,
        Err(e) => {
            tracing::error!(error = %e, "workerd failed");
            super::failed("", e)
        }
    }
}
