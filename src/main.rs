use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use rotor::telemetry::{self, Metrics, Readiness};

/// rotor: AWS Secrets Manager secrets, their KMS keys and rotation, declared as
/// Kubernetes objects, mirrored into Secrets, with consumers rolled on rotation.
#[derive(Parser)]
#[command(version, about)]
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
            let metrics = Arc::new(Metrics::default());
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
