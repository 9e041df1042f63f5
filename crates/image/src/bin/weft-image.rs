//! `weft-image build`: writes weft's images as OCI image-layout archives,
//! without a container engine (`make images`; docs/images.md).

use std::path::PathBuf;

use clap::Parser;
use weft_image::{ImageNames, base, recipes};

/// Builds weft's container images as OCI archives.
#[derive(Parser)]
#[command(name = "weft-image")]
enum Cli {
    /// Writes `<out>/<name>.oci.tar` for every component and
    /// `<out>/images.json` (each image's reference, digest and size).
    Build {
        /// Where the components' binaries are (`target/dist`).
        #[arg(long)]
        bin_dir: PathBuf,
        /// The weft-cni binary (the static build), if not in `--bin-dir`.
        #[arg(long)]
        cni_plugin: Option<PathBuf>,
        /// Where the archives go.
        #[arg(long)]
        out: PathBuf,
        /// Where the base layers are cached.
        #[arg(long, default_value = "/var/cache/weft/images")]
        cache: PathBuf,
        /// The tag (default: the chart's).
        #[arg(long)]
        tag: Option<String>,
        /// The registry (default: the chart's).
        #[arg(long)]
        registry: Option<String>,
        /// Ship the binaries without their line tables (`strip
        /// --strip-debug` on copies): about a fifth of the size; panics'
        /// backtraces keep function names, not file:line.
        #[arg(long)]
        strip_debug: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let Cli::Build {
        bin_dir,
        cni_plugin,
        out,
        cache,
        tag,
        registry,
        strip_debug,
    } = Cli::parse();
    let mut names = ImageNames::chart();
    if let Some(tag) = tag {
        names.tag = tag;
    }
    if let Some(registry) = registry {
        names.registry = registry;
    }
    let stripped = out.join(".stripped");
    let mut built = Vec::new();
    for recipe in recipes::COMPONENTS {
        let found = |binary: &str| match (&cni_plugin, binary) {
            (Some(path), "weft-cni") => path.clone(),
            _ => bin_dir.join(binary),
        };
        for binary in recipe.binaries {
            let path = found(binary);
            anyhow::ensure!(path.is_file(), "{} is not built", path.display());
            if strip_debug {
                std::fs::create_dir_all(&stripped)?;
                let copy = stripped.join(binary);
                std::fs::copy(&path, &copy)?;
                let status = std::process::Command::new("strip")
                    .arg("--strip-debug")
                    .arg(&copy)
                    .status()?;
                anyhow::ensure!(status.success(), "strip --strip-debug {}", copy.display());
            }
        }
        let locate = |binary: &str| {
            if strip_debug {
                stripped.join(binary)
            } else {
                found(binary)
            }
        };
        let spec = recipe.spec(&names, env!("CARGO_PKG_VERSION"), locate)?;
        let base = base::prepare(recipe.base, &cache)?;
        let image = weft_image::archive::build(&spec, &base, &out)?;
        println!(
            "{:<48} {:>6.1} MiB  {}  {}",
            image.reference,
            image.size as f64 / (1024.0 * 1024.0),
            image.digest,
            image.archive.display()
        );
        built.push(image);
    }
    let index = out.join("images.json");
    std::fs::write(&index, serde_json::to_vec_pretty(&built)?)?;
    println!("{}", index.display());
    Ok(())
}
