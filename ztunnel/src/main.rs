//! `ztunnel`: parse flags, set up logging, run.

use clap::Parser;
use weft_ztunnel::options::Options;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let log = weft_runtime::logging::init(options.proxy.log_format, &options.proxy.log);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.proxy.worker_threads())
        .enable_all()
        .build()?
        .block_on(weft_ztunnel::app::run(options, log))
}
