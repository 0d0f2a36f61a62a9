//! `workerd [--config FILE] <command>`: see [`workerd::cli`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    workerd::cli::main().await
}
