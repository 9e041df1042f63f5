//! The chained CNI plugin: see `weft_cni::plugin`.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().take(1 << 20).read_to_end(&mut stdin) {
        Ok(_) => weft_cni::plugin::invoke(|k| std::env::var(k).ok(), &stdin),
        Err(e) => weft_cni::plugin::Outcome {
            stdout: weft_cni::cni::CniError::new(
                weft_cni::cni::ErrorCode::Io,
                format!("cannot read stdin: {e}"),
            )
            .to_json(weft_cni::cni::CNI_VERSION),
            failed: true,
        },
    };
    let mut out = std::io::stdout().lock();
    // Nothing useful can be done if stdout is gone; the exit code still tells.
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    std::process::exit(i32::from(outcome.failed));
}
