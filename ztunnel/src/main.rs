//! `ztunnel`: parse flags, set up logging, run.

use clap::Parser;
use weft_ztunnel::options::Options;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let log = weft_ztunnel::logging::init(options.log_format, &options.log);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = options.worker_threads {
        runtime.worker_threads(threads.get());
    }
    runtime
        .enable_all()
        .build()?
        .block_on(weft_ztunnel::app::run(options, log))
}
