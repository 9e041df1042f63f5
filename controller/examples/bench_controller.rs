//! Runs `bench/src/controller.rs` from this crate, so the controller's own
//! build checks it and a developer can try it without the bench crate:
//! `cargo run --release -p weft-controller --example bench_controller -- --help`.

#[path = "../../bench/src/controller.rs"]
mod controller;

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: controller::ControllerBenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = controller::run(cli.args).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
