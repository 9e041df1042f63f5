//! The weftctl binary: parse the command line, run it, exit with the code the
//! outcome maps to (see `weftctl --help` and docs/weftctl.md).

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = weftctl::args::Cli::parse();
    let code = match weftctl::run(cli).await {
        Ok(outcome) => outcome.code(),
        Err(e) => {
            eprintln!("weftctl: {e}");
            e.code()
        }
    };
    std::process::exit(code);
}
