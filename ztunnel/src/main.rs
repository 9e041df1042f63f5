//! `ztunnel`: parse flags, set up logging, run (or answer a probe).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use weft_runtime::admin::probe::{Verdict, probe};
use weft_ztunnel::options::{Options, ProbeOptions};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<ExitCode> {
    if let Some(probe) = ProbeOptions::from_command_line(std::env::args_os()) {
        let probe = probe.unwrap_or_else(|e| e.exit());
        return answer_probe(
            &probe.socket,
            probe.live,
            Duration::from_millis(probe.timeout_ms),
        );
    }
    let options = Options::parse();
    let log = weft_runtime::logging::init(options.proxy.log_format, &options.proxy.log);
    options
        .proxy
        .runtime()?
        .block_on(weft_ztunnel::app::run(options, log))?;
    Ok(ExitCode::SUCCESS)
}

/// The kubelet records what a failing probe prints, so the reason goes to
/// stdout as well as into the exit code.
fn answer_probe(
    socket: &std::path::Path,
    live: bool,
    within: Duration,
) -> anyhow::Result<ExitCode> {
    let verdict = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(probe(socket, within))?;
    Ok(match verdict {
        Verdict::Ready => {
            println!("ready");
            ExitCode::SUCCESS
        }
        Verdict::NotReady(why) if live => {
            println!("alive, not ready: {why}");
            ExitCode::SUCCESS
        }
        Verdict::NotReady(why) => {
            println!("not ready: {why}");
            ExitCode::FAILURE
        }
    })
}
