//! `waypoint`: parse flags, set up logging, run.

use clap::Parser;
use weft_waypoint::options::Options;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let log = weft_runtime::logging::init(options.proxy.log_format, &options.proxy.log);
    options
        .proxy
        .runtime()?
        .block_on(weft_waypoint::app::run(options, log))
}
