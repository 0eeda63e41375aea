use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use rotor::telemetry::{self, Metrics, Readiness};

/// The crate version, and the git revision `build.rs` found (`-dirty` when
/// the tree had changes, `unknown` outside a checkout).
const VERSION: &str = env!("CARGO_PKG_VERSION");
const GIT_SHA: &str = env!("ROTOR_GIT_SHA");
const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ROTOR_GIT_SHA"), ")");

/// rotor: AWS Secrets Manager secrets, their KMS keys and rotation, declared as
/// Kubernetes objects, mirrored into Secrets, with consumers rolled on rotation.
#[derive(Parser)]
#[command(version = LONG_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(Box<rotor::config::RunArgs>),
    /// Print the RotatedSecret CustomResourceDefinition as YAML.
    Crd,
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", rotor::api::crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            telemetry::init_tracing(args.log_format);
            telemetry::log_panics_without_messages();
            tracing::info!(version = VERSION, git_sha = GIT_SHA, "rotor version");
            let metrics = Arc::new(Metrics::default());
            metrics.set_build_info(VERSION, GIT_SHA);
            let readiness = Arc::new(Readiness::default());
            let server = tokio::spawn(telemetry::serve(
                args.metrics_addr,
                metrics.clone(),
                readiness.clone(),
            ));
            let result = tokio::select! {
                r = rotor::controller::run(*args, metrics, readiness) => r,
                r = server => Err(format!("metrics server stopped: {r:?}")),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "rotor failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
